"""Data-parallel "large batch" training on this machine: 1 worker vs N gloo workers at the
same global batch, on Fashion-MNIST with the LeNet-style CNN.

At equal global batch the workers compute the same SGD steps (tested to float tolerance in
tests/central/test_train.py), so final accuracy should agree and only the time per epoch
may differ: each worker computes 1/N of every batch, and pays one all-reduce of the
gradients (44,426 floats for LeNet) per step. A bare PyTorch loop over the same batches in
this process (no sharding, no evaluation, no checkpoints) is measured in the same run as
the hardware baseline. Each case prints one line; the last line gives the ratios.

    python benchmarks/large_batch.py                           # 5 epochs, batch 256, 1 vs 2
    python benchmarks/large_batch.py --workers 1 2 4 --batch-size 1024 --lr 0.4
    python benchmarks/large_batch.py --data digits --model mlp --epochs 1   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedge.central.jobs import prepare_job, run_job
from fedge.central.train import TrainJob, epoch_order
from fedge.central.train_config import parse_train_config
from fedge.models.spec import build_model


def make_job(args: argparse.Namespace) -> TrainJob:
    config = parse_train_config(
        {
            "name": f"large-batch-{args.data}",
            "data": {"name": args.data},
            "model": {"preset": args.model},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "reference_batch": args.reference_batch,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "warmup_epochs": args.warmup_epochs,
                "seed": args.seed,
            },
        }
    )
    job = prepare_job(config)
    if args.limit:
        job = dataclasses.replace(
            job, x_train=job.x_train[: args.limit], y_train=job.y_train[: args.limit]
        )
    return job


def plain_epoch_seconds(job: TrainJob) -> float:
    """One epoch of a bare single-threaded PyTorch loop over the job's global batches."""
    t = job.config.train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(job.spec, seed=t.seed)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
        order = epoch_order(t.seed, 0, len(job.y_train))
        t0 = time.perf_counter()
        for start in range(0, len(order), t.batch_size):
            idx = order[start : start + t.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(job.x_train[idx]), job.y_train[idx]).backward()
            optimizer.step()
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def run_case(job: TrainJob, workers: int, folder: Path) -> dict:
    t0 = time.perf_counter()
    result = run_job(job, folder / f"w{workers}", workers=workers)
    wall = time.perf_counter() - t0
    history = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    # Training time only (the test-set evaluation after each epoch is left out); epoch 1
    # includes first-step allocations, so later epochs give the steady state.
    steady = [m["train_seconds"] for m in history[1:]] or [history[0]["train_seconds"]]
    return {
        "workers": workers,
        "seconds_per_epoch": sum(steady) / len(steady),
        "first_epoch_seconds": history[0]["train_seconds"],
        "final_test_accuracy": result.summary["final_test_accuracy"],
        "job_seconds": wall,
        "params": result.params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    parser.add_argument("--model", default="lenet", choices=["lenet", "mlp", "logreg"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch")
    parser.add_argument("--lr", type=float, default=0.01, help="at --reference-batch")
    parser.add_argument("--reference-batch", type=int, default=64)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=0, help="use only this many examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    job = make_job(args)
    t = job.config.train
    print(
        f"{job.data_name}: {len(job.y_train):,} training / {len(job.y_test):,} test examples, "
        f"{job.spec.name}, {t.epochs} epochs, global batch {t.batch_size}, peak lr "
        f"{t.peak_lr:g}, warm-up {t.warmup_epochs:g} epochs, torch {torch.__version__}"
    )
    plain = plain_epoch_seconds(job)
    print(f"plain PyTorch loop, 1 process: {plain:.2f} s per epoch (training only)")
    cases = []
    with tempfile.TemporaryDirectory(prefix="fedge-large-batch-") as tmp:
        for workers in args.workers:
            case = run_case(job, workers, Path(tmp))
            cases.append(case)
            print(
                f"workers={workers}: {case['seconds_per_epoch']:.2f} s of training per epoch "
                f"(first {case['first_epoch_seconds']:.2f} s, "
                f"whole job {case['job_seconds']:.1f} s), "
                f"final test accuracy {100 * case['final_test_accuracy']:.2f}%"
            )
    base = cases[0]
    for case in cases[1:]:
        gap = max(
            float((case["params"][k] - base["params"][k]).abs().max()) for k in base["params"]
        )
        print(
            f"ratio workers={case['workers']} vs {base['workers']}: time per epoch x"
            f"{case['seconds_per_epoch'] / base['seconds_per_epoch']:.2f} (speed-up "
            f"{base['seconds_per_epoch'] / case['seconds_per_epoch']:.2f}), accuracy "
            f"{100 * (case['final_test_accuracy'] - base['final_test_accuracy']):+.2f} points, "
            f"max |weight difference| {gap:.2g}; 1 worker vs plain loop x"
            f"{base['seconds_per_epoch'] / plain:.2f}"
        )


if __name__ == "__main__":
    main()
