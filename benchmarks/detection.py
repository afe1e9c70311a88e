"""Object detection on synthetic canvases: the CenterNet preset trained in plain PyTorch.

Canvases of 96×96 pixels hold 1–4 Fashion-MNIST items at random positions and scales
(:mod:`fedge.data.canvases`): ``--train`` canvases of training-split items, ``--test``
held-out canvases of test-split items. The ``centernet`` preset (``preset_spec("centernet",
(1, 96, 96), 10)``, ~126k weights, output stride 4) trains with
:func:`fedge.tasks.detection_train.train_detector` for ``--epochs`` epochs or until
``--max-minutes`` of training time, whichever comes first (the learning rate anneals
over whichever runs out first, so a run cut by the clock still ends annealed); the
held-out canvases are evaluated with pycocotools (COCO mAP@[.5:.95] and mAP@.5). Target
(issue 20): mAP@.5 ≥ 0.75 within 15 minutes of training on the project's 2-core machine.
One torch thread by default: on this shared machine two threads collapsed to a tenth of
the one-thread speed while other work ran.

Usage::

    python benchmarks/detection.py                          # the full run (≤ 15 min)
    python benchmarks/detection.py --train 2000 --epochs 3  # a smoke test
    python benchmarks/detection.py --write-coco /tmp/canvases   # also write the data

Prints one line per epoch and a summary line; ``--json`` writes the history.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fedge.data.canvases import fashion_mnist_canvases
from fedge.data.detection import write_coco
from fedge.models.spec import build_model, count_parameters, preset_spec
from fedge.tasks import Detection
from fedge.tasks.detection_train import DetectorTraining, train_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=8000, help="training canvases")
    parser.add_argument("--test", type=int, default=500, help="held-out canvases")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training time cap")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--no-flip", action="store_true", help="no left-right flips")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between evaluations")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: see the docstring)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-coco", type=Path, help="write the canvases here (COCO)")
    parser.add_argument("--json", type=Path, help="write the history here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train, test = fashion_mnist_canvases(args.train, args.test, seed=args.seed)
    data_seconds = time.perf_counter() - t0
    if args.write_coco:
        write_coco(train, args.write_coco / "train")
        write_coco(test, args.write_coco / "test")
    objects = int((train.y[..., 0] >= 0).sum())
    print(
        f"data: {len(train)} train canvases ({objects} items), {len(test)} held-out, "
        f"made in {data_seconds:.1f} s"
    )
    spec = preset_spec("centernet", train.input_shape, train.num_classes)
    task = Detection.from_spec(spec)
    config = DetectorTraining(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        flip=not args.no_flip,
        max_seconds=args.max_minutes * 60,
        eval_every=args.eval_every,
        seed=args.seed,
    )

    def show(m: dict) -> None:
        evaluated = (
            f"  test loss {m['test_loss']:.3f}  mAP@.5 {m['test_map50']:.3f}  "
            f"mAP@[.5:.95] {m['test_map']:.3f}"
            if "test_map" in m
            else ""
        )
        print(
            f"epoch {m['epoch']:3d}  train loss {m['train_loss']:.3f}  "
            f"{m['train_seconds']:7.1f} s{evaluated}",
            flush=True,
        )

    result = train_detector(spec, task, train, test, config, log=show)
    final = result.final
    images = final["steps"] * args.batch_size
    print(
        f"centernet ({count_parameters(build_model(spec)):,} weights)  train {len(train)}  "
        f"test {len(test)}  epochs {final['epoch']}  {args.optimizer} lr {args.lr:g}  "
        f"batch {args.batch_size}  threads {torch.get_num_threads()}  "
        f"train {result.train_seconds:.0f} s ({images / result.train_seconds:.0f} images/s)  "
        f"mAP@.5 {final['test_map50']:.3f}  mAP@[.5:.95] {final['test_map']:.3f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": platform.platform(),
                    "history": result.history,
                    "train_seconds": result.train_seconds,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
