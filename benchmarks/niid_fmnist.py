"""Reproduce NIID-Bench's Fashion-MNIST rows with fedge.

Li, Diao, Chen, He. "Federated Learning on Non-IID Data Silos: An Experimental Study".
ICDE 2022, Table III (FMNIST), the reference values of issues 2 and 3: FedAvg IID 89.0,
Dir(0.5) 88.4, #C=2 81.0, #C=3 83.2; FedProx IID 89.5, Dir(0.5) 88.6, #C=3 82.5; SCAFFOLD
IID 89.5, Dir(0.5) 88.4, #C=3 84.2; FedNova IID 89.3, Dir(0.5) 88.1, #C=3 83.2. Flower's
baseline (``baselines/niid_bench``) publishes its own table: the best round of 50, mean ±
std of 3 runs, all on the seed-42 partitions (e.g. FedAvg Dir(0.5) 88.09 ± 0.29, FedProx
88.15 ± 0.42). Setting: 10 clients all sampled each round, 50 rounds, 10 local epochs, batch
64, SGD lr 0.01 momentum 0.9 (weight decay 1e-5), LeNet-style CNN; see
examples/niid_fmnist.toml. Each case prints its final and its best round; ``--seeds 0 1 2``
runs every case once per experiment seed and prints mean ± std over them.

With the sequential engine (the default), cases run in parallel worker processes with one
thread each (two processes with one thread outrun one process with two threads on a 2-core
machine); with ``--engine vectorized --workers 1`` one case at a time trains its 10
clients stacked on all cores, about 3x plain PyTorch here. ``--partition-seed 42`` draws
the Dir(0.5), #C=2 and #C=3 partitions of Flower's baseline (fedge's partitioners make
NIID-Bench's draws call for call with the same numpy generator); its IID split is another
uniform shuffle. Before the cases, plain PyTorch trains the same CNN on the same data for a
few seconds, so that fedge's training throughput is printed as a ratio against the
hardware's in the same run.

    python benchmarks/niid_fmnist.py                  # FedAvg's four cases, ~85 min on 2 cores
    python benchmarks/niid_fmnist.py --cases '#C=2' '#C=3' --partition-seed 42  # Flower's
    python benchmarks/niid_fmnist.py --strategies fedprox scaffold fednova --partition-seed 42 \
        --cases iid dir0.5 '#C=3' --engine vectorized --workers 1   # ~11 min per case
    python benchmarks/niid_fmnist.py --strategies fedavg --cases dir0.5 --seeds 0 1 2 3 \
        --partition-seed 42 --engine vectorized --workers 1   # spread over seeds
    python benchmarks/niid_fmnist.py --cases dir0.5 --partition-seed 42 --engine plain \
        --workers 1   # the same FedAvg as a textbook PyTorch loop, a cross-check
    python benchmarks/niid_fmnist.py --cases iid --rounds 5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

from fedge.config import apply_overrides, parse_config
from fedge.data.fashion_mnist import load_fashion_mnist
from fedge.models.spec import build_model, preset_spec
from fedge.sim.experiment import Federation, prepare, run_to_folder

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "niid_fmnist.toml"

# case -> partition overrides
CASES: dict[str, list[str]] = {
    "iid": ["partition.scheme=iid", "partition.num_clients=10"],
    "dir0.5": ["partition.scheme=dirichlet", "partition.num_clients=10", "partition.beta=0.5"],
    "#C=2": ["partition.scheme=label_k", "partition.num_clients=10", "partition.k=2"],
    "#C=3": ["partition.scheme=label_k", "partition.num_clients=10", "partition.k=3"],
}
# strategy -> overrides of the [strategy] table
STRATEGIES: dict[str, list[str]] = {
    "fedavg": ['strategy.name="fedavg"'],
    "fedprox": ['strategy.name="fedprox"'],  # μ from --mu
    "scaffold": ['strategy.name="scaffold"'],
    "fednova": ['strategy.name="fednova"'],
}
# (strategy, case) -> NIID-Bench accuracy in %
PAPER: dict[tuple[str, str], float] = {
    ("fedavg", "iid"): 89.0,
    ("fedavg", "dir0.5"): 88.4,
    ("fedavg", "#C=2"): 81.0,
    ("fedavg", "#C=3"): 83.2,
    ("fedprox", "iid"): 89.5,
    ("fedprox", "dir0.5"): 88.6,
    ("fedprox", "#C=3"): 82.5,
    ("scaffold", "iid"): 89.5,
    ("scaffold", "dir0.5"): 88.4,
    ("scaffold", "#C=3"): 84.2,
    ("fednova", "iid"): 89.3,
    ("fednova", "dir0.5"): 88.1,
    ("fednova", "#C=3"): 83.2,
}


def run_case(
    strategy: str,
    case: str,
    mu: float,
    rounds: int,
    seed: int,
    partition_seed: int | None,
    engine: str,
    out: Path,
    seed_in_name: bool = False,
) -> dict:
    """Train one case in this (worker) process and return its summary."""
    raw = tomllib.loads(CONFIG.read_text())
    raw["partition"] = {}  # replaced whole: schemes take different keys
    overrides = [*CASES[case], *STRATEGIES[strategy], f"rounds={rounds}", f"seed={seed}"]
    label = strategy
    if strategy == "fedprox":
        label = f"fedprox-mu{mu:g}"
        overrides.append(f"strategy.mu={mu}")
    # --engine plain: prepare() only loads and partitions the data, for the textbook loop.
    fedge_engine = "sequential" if engine == "plain" else engine
    overrides += [f'engine="{fedge_engine}"', f'name="niid-fmnist-{label}-{case}"']
    # One case per core, or the vectorized engine on all cores (set explicitly: the
    # plain-PyTorch baseline left this worker process at one thread).
    overrides.append(f"threads={1 if engine == 'sequential' else os.cpu_count()}")
    if partition_seed is not None:
        overrides.append(f"partition.seed={partition_seed}")
    fed = prepare(parse_config(apply_overrides(raw, overrides), f"case {label} {case}"))
    folder = out / f"{label}-{case.replace('#', '').replace('=', '')}"
    if engine == "plain":
        folder = folder.with_name(f"{folder.name}-plain")
    if seed_in_name:
        folder = folder.with_name(f"{folder.name}-seed{seed}")
    if engine == "plain":
        summary = plain_pytorch_run(fed, mu if strategy == "fedprox" else 0.0, folder)
    else:
        summary, _ = run_to_folder(fed, folder, overwrite=True)
    history = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    examples = sum(m["samples"] for m in history) * fed.local.epochs
    summary["samples_per_second"] = examples / sum(m["seconds"] for m in history)
    summary["case"] = case
    summary["label"] = label
    summary["paper"] = PAPER.get((strategy, case))
    return summary


class FlowerCNN(torch.nn.Module):
    """The CNN of Flower's baseline (``CNNMnist``), written as it writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 5)
        self.pool = torch.nn.MaxPool2d(2, 2)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.fc1 = torch.nn.Linear(256, 120)
        self.fc2 = torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def plain_pytorch_run(fed: Federation, mu: float, folder: Path) -> dict:
    """FedAvg (or FedProx with ``mu`` > 0) as a textbook PyTorch loop, no fedge involved.

    A cross-check of fedge's engines: the loop of Flower's NIID-Bench baseline, on the
    clients of ``fed`` (fedge's loader and partitioner only). Each round every client
    loads the global ``state_dict``, builds a new SGD optimizer and trains its epochs,
    each a fresh shuffle cut into batches with a partial last one (what the baseline's
    ``DataLoader(shuffle=True)`` yields, without its per-example indexing); the server
    averages the state dicts weighted by n_k and evaluates on the whole test set. Writes
    ``metrics.jsonl`` to ``folder``.
    """
    cfg, c = fed.config, fed.config.client
    torch.manual_seed(cfg.seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [torch.as_tensor(r, dtype=torch.int64) for r in fed.partition]
    data = [(fed.data.train.x[r], fed.data.train.y[r]) for r in rows]
    sizes = [len(r) for r in rows]
    total_n = sum(sizes)
    net = FlowerCNN()
    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    history = []
    start = time.perf_counter()
    with (folder / "metrics.jsonl").open("w") as log:
        for round_ in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            total = {k: torch.zeros_like(v) for k, v in global_state.items()}
            for (x, y), n in zip(data, sizes, strict=True):
                net.load_state_dict(global_state)
                anchor = [p.detach().clone() for p in net.parameters()]
                opt = torch.optim.SGD(
                    net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
                )
                net.train()
                for _ in range(c.epochs):
                    order = torch.randperm(n)
                    for i in range(0, n, c.batch_size):
                        xb, yb = x[order[i : i + c.batch_size]], y[order[i : i + c.batch_size]]
                        opt.zero_grad()
                        loss = F.cross_entropy(net(xb), yb)
                        if mu > 0:
                            prox = sum(
                                torch.sum((p - a) ** 2)
                                for p, a in zip(net.parameters(), anchor, strict=True)
                            )
                            loss = loss + mu / 2 * prox
                        loss.backward()
                        opt.step()
                for k, v in net.state_dict().items():
                    total[k] += v * (n / total_n)
            global_state = total
            net.load_state_dict(global_state)
            net.eval()
            with torch.no_grad():
                logits = net(fed.data.test.x)
            metrics = {
                "round": round_,
                "test_accuracy": (logits.argmax(1) == fed.data.test.y).float().mean().item(),
                "test_loss": F.cross_entropy(logits, fed.data.test.y).item(),
                "samples": total_n,
                "seconds": time.perf_counter() - t0,
            }
            history.append(metrics)
            log.write(json.dumps(metrics) + "\n")
            log.flush()
    best = max(history, key=lambda m: m["test_accuracy"])
    seconds = time.perf_counter() - start
    return {
        "name": cfg.name,
        "strategy": "fedprox" if mu > 0 else "fedavg",
        "engine": "plain",
        "rounds": cfg.rounds,
        "seed": cfg.seed,
        "final_test_accuracy": history[-1]["test_accuracy"],
        "final_test_loss": history[-1]["test_loss"],
        "best_test_accuracy": best["test_accuracy"],
        "best_round": best["round"],
        "seconds": seconds,
        "seconds_per_round": seconds / cfg.rounds,
    }


def plain_pytorch_throughput(seconds: float = 8.0) -> float:
    """Examples/s of a textbook PyTorch loop (1 thread, batch 64) on the same CNN and data."""
    torch.set_num_threads(1)
    data = load_fashion_mnist()
    x, y = data.train.x[:6000], data.train.y[:6000]
    model = build_model(preset_spec("lenet", (1, 28, 28), 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, 6000, 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
            seen += len(y[i : i + 64])
    return seen / (time.perf_counter() - start)


def print_over_seeds(results: list[dict]) -> None:
    """Mean ± sample standard deviation over seeds of each case's final and best round."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in results:
        groups.setdefault((s["label"], s["case"]), []).append(s)
    for (label, case), runs in groups.items():
        final = [100 * r["final_test_accuracy"] for r in runs]
        best = [100 * r["best_test_accuracy"] for r in runs]
        line = (
            f"{label:>8} {case:>6} over {len(runs)} seeds: final {statistics.mean(final):.2f} "
            f"± {statistics.stdev(final):.2f}% ({min(final):.2f}–{max(final):.2f}), best round "
            f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}%"
        )
        paper = runs[0]["paper"]
        if paper is not None:
            line += (
                f"; gap to NIID-Bench {paper:.1f}%: final {statistics.mean(final) - paper:+.2f}"
                f", best {statistics.mean(best) - paper:+.2f} pt"
            )
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--strategies", nargs="+", default=["fedavg"], choices=list(STRATEGIES))
    parser.add_argument(
        "--mu",
        type=float,
        default=0.01,
        help="FedProx's proximal coefficient (default 0.01); NIID-Bench tunes it over "
        "0.001, 0.01, 0.1 and 1 and reports the best",
    )
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--seed",
        "--seeds",
        dest="seeds",
        type=int,
        nargs="+",
        default=[0],
        help="experiment seed(s): model initialization and batch order (default 0); with "
        "several, each case runs once per seed and the mean and spread are printed",
    )
    parser.add_argument(
        "--partition-seed",
        type=int,
        default=None,
        help="seed of the partition alone (default: the experiment seed); 42 draws the "
        "partitions of Flower's NIID-Bench baseline, which made the reference numbers",
    )
    parser.add_argument("--workers", type=int, default=2, help="cases at once")
    parser.add_argument(
        "--engine",
        default="sequential",
        choices=["sequential", "vectorized", "plain"],
        help="sequential: one single-thread case per worker; vectorized: use --workers 1, "
        "it trains the 10 clients stacked on all cores (about 1.5x faster here); plain: "
        "FedAvg/FedProx as a textbook PyTorch loop on all cores, the loop of Flower's "
        "baseline, to cross-check fedge's accuracy and speed",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "niid_fmnist")
    args = parser.parse_args()
    if args.engine == "plain" and not set(args.strategies) <= {"fedavg", "fedprox"}:
        parser.error("--engine plain runs fedavg and fedprox only")

    results = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        # The baseline runs in every worker at once, as the cases will.
        rates = list(pool.map(plain_pytorch_throughput, [8.0] * args.workers))
        baseline = sum(rates) / len(rates)
        print(
            f"plain PyTorch (1 thread, batch 64, {args.workers} processes at once): "
            f"{baseline:,.0f} examples/s per process",
            flush=True,
        )
        start = time.perf_counter()
        futures = [
            pool.submit(
                run_case,
                strategy,
                case,
                args.mu,
                args.rounds,
                seed,
                args.partition_seed,
                args.engine,
                args.out,
                len(args.seeds) > 1,
            )
            for strategy in args.strategies
            for case in args.cases
            for seed in args.seeds
        ]
        for future in as_completed(futures):
            s = future.result()
            acc = 100 * s["final_test_accuracy"]
            s["ratio_vs_plain"] = s["samples_per_second"] / baseline
            paper = (
                "no paper value"
                if s["paper"] is None
                else (f"NIID-Bench {s['paper']:.1f}%, gap {acc - s['paper']:+.2f} pt")
            )
            results.append(s)
            seed_note = f" seed {s['seed']}" if len(args.seeds) > 1 else ""
            print(
                f"{s['label']:>8} {s['case']:>6}{seed_note}: final {acc:.2f}% "
                f"(best {100 * s['best_test_accuracy']:.2f}% @ round {s['best_round']}), "
                f"{paper}; {s['seconds']:.0f} s wall, {s['samples_per_second']:,.0f} "
                f"examples/s = {s['ratio_vs_plain']:.2f}x plain PyTorch",
                flush=True,
            )
    print(f"total wall time {time.perf_counter() - start:.0f} s with {args.workers} workers")
    if len(args.seeds) > 1:
        print_over_seeds(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-{'-'.join(args.strategies)}-mu{args.mu:g}.json").write_text(
        json.dumps(
            {"plain_pytorch_examples_per_second": baseline, "mu": args.mu, "cases": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
