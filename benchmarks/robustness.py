"""Robust aggregation under attack: Fashion-MNIST, Dirichlet(0.5), 20% attackers.

Rows are aggregators (FedAvg's weighted mean, coordinate-wise median and trimmed mean
(Yin et al. 2018), Krum and Multi-Krum (Blanchard et al. 2017), norm bounding (Sun et al.
2019)); columns are the clean run, 20% sign-flipping attackers (they report −Δ) and 20%
scaling attackers (they report 10·Δ, model replacement). Setting: examples/
robustness_fmnist.toml (10 clients, all per round, 1 local epoch, batch 64, SGD lr 0.01
momentum 0.9, LeNet-style CNN, 30 rounds).

    python benchmarks/robustness.py
    python benchmarks/robustness.py --rounds 3     # a quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, config, in_parallel

from fedge.sim.experiment import prepare, run

CONFIG = ROOT / "examples" / "robustness_fmnist.toml"
AGGREGATORS = {
    "mean (FedAvg)": ['strategy.aggregator.name="mean"'],
    "median": ['strategy.aggregator.name="median"'],
    "trimmed mean 0.2": ['strategy.aggregator.name="trimmed_mean"', "strategy.aggregator.beta=0.2"],
    "krum f=2": ['strategy.aggregator.name="krum"', "strategy.aggregator.f=2"],
    "multi-krum f=2 m=6": [
        'strategy.aggregator.name="multi_krum"',
        "strategy.aggregator.f=2",
        "strategy.aggregator.m=6",
    ],
    "norm bound + mean": ['strategy.aggregator.name="mean"', "strategy.aggregator.clip_norm=CLIP"],
}
ATTACKS = {
    "clean": None,
    "sign flip 20%": ['attack.kind="sign_flip"', "attack.fraction=0.2", "attack.scale=1.0"],
    "scale x10 20%": ['attack.kind="scale"', "attack.fraction=0.2", "attack.scale=10.0"],
}


def run_case(aggregator: str, attack: str, rounds: int, seed: int, clip: float) -> dict:
    overrides = ['strategy.name="fedavg"', f"rounds={rounds}", f"seed={seed}"]
    overrides += [o.replace("CLIP", str(clip)) for o in AGGREGATORS[aggregator]]
    overrides += ATTACKS[attack] or []
    drop = ["attack"] if ATTACKS[attack] is None else []
    cfg = config(CONFIG, overrides, replace=["strategy", "attack"], drop=drop)
    t0 = time.perf_counter()
    history = run(prepare(cfg)).history
    return {
        "aggregator": aggregator,
        "attack": attack,
        "test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(m["test_accuracy"] for m in history),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clip", type=float, default=2.0, help="norm bound (L2 of Δ)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "robustness.json")
    args = parser.parse_args()
    jobs = [(g, a, args.rounds, args.seed, args.clip) for g in AGGREGATORS for a in ATTACKS]
    start = time.perf_counter()
    results = []
    for r in in_parallel(run_case, jobs, args.workers):
        results.append(r)
        print(
            f"{r['aggregator']:<20} {r['attack']:<14} {100 * r['test_accuracy']:6.2f}% "
            f"({r['seconds']:.0f} s)",
            flush=True,
        )
    clean = {r["aggregator"]: r for r in results if r["attack"] == "clean"}
    base = clean["mean (FedAvg)"]["test_accuracy"]
    print(f"\n{'aggregator':<20}" + "".join(f"{a:>16}" for a in ATTACKS) + "   vs clean FedAvg")
    for g in AGGREGATORS:
        row = {r["attack"]: r["test_accuracy"] for r in results if r["aggregator"] == g}
        worst = min(row.values())
        cells = "".join(f"{100 * row[a]:15.2f}%" for a in ATTACKS)
        print(f"{g:<20}{cells}   worst {100 * (worst - base):+.2f} pt")
    print(f"(test accuracy after {args.rounds} rounds; norm bound {args.clip})")
    print(f"total wall time {time.perf_counter() - start:.0f} s with {args.workers} workers")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
