"""FedAvg vs FedProx on Synthetic(α, β) with and without stragglers (the FedProx setting).

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
Networks". MLSys 2020, Figure 1/2: Synthetic(0,0), (0.5,0.5), (1,1); 30 devices, 10 per
round, 20 local epochs, batch 10, SGD lr 0.01, multinomial logistic regression; 0% and 90%
stragglers. FedAvg drops stragglers; FedProx keeps their partial work (μ = 0 isolates the
effect of partial work, μ = 1 adds the proximal term). The paper's claim: with 90%
stragglers and growing heterogeneity FedProx (μ > 0) converges faster and more stably.

    python benchmarks/synthetic.py                 # 18 runs of 200 rounds
    python benchmarks/synthetic.py --rounds 20     # a quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, config, in_parallel

from fedge.fl.local import evaluate
from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run

CONFIG = ROOT / "examples" / "synthetic_fedprox.toml"
DATASETS = {"(0,0)": (0.0, 0.0), "(0.5,0.5)": (0.5, 0.5), "(1,1)": (1.0, 1.0)}
METHODS = {
    "FedAvg": ['strategy.name="fedavg"'],
    "FedProx mu=0": ['strategy.name="fedprox"', "strategy.mu=0.0"],
    "FedProx mu=1": ['strategy.name="fedprox"', "strategy.mu=1.0"],
}


def run_case(dataset: str, stragglers: float, method: str, rounds: int, seed: int) -> dict:
    alpha, beta = DATASETS[dataset]
    overrides = [
        f"data.alpha={alpha}",
        f"data.beta={beta}",
        f"system.stragglers={stragglers}",
        f"rounds={rounds}",
        f"seed={seed}",
        *METHODS[method],
    ]
    fed = prepare(config(CONFIG, overrides, replace=["strategy"]))
    t0 = time.perf_counter()
    result = run(fed)
    model = build_model(fed.spec)
    train = fed.data.train
    train_loss, _ = evaluate(model, train.x, train.y, params=result.state.params)
    last = result.history[-1]
    return {
        "dataset": dataset,
        "stragglers": stragglers,
        "method": method,
        "test_accuracy": last["test_accuracy"],
        "train_loss": train_loss,
        "best_test_accuracy": max(m["test_accuracy"] for m in result.history),
        "seconds": time.perf_counter() - t0,
        "accuracy_curve": [m["test_accuracy"] for m in result.history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "synthetic.json")
    args = parser.parse_args()
    jobs = [
        (d, s, m, args.rounds, args.seed) for d in DATASETS for s in (0.0, 0.9) for m in METHODS
    ]
    start = time.perf_counter()
    results = []
    for r in in_parallel(run_case, jobs, args.workers):
        results.append(r)
        print(
            f"Synthetic{r['dataset']:<10} stragglers {r['stragglers']:.0%} {r['method']:<13} "
            f"test acc {100 * r['test_accuracy']:5.2f}% train loss {r['train_loss']:.3f} "
            f"({r['seconds']:.0f} s)",
            flush=True,
        )
    print(f"\n{'dataset':<12} {'stragglers':>10}  " + "  ".join(f"{m:>22}" for m in METHODS))
    for d in DATASETS:
        for s in (0.0, 0.9):
            row = {r["method"]: r for r in results if r["dataset"] == d and r["stragglers"] == s}
            cells = [
                f"{100 * row[m]['test_accuracy']:6.2f}% / {row[m]['train_loss']:6.3f}"
                for m in METHODS
            ]
            print(f"{d:<12} {s:>10.0%}  " + "  ".join(f"{c:>22}" for c in cells))
    print("(test accuracy / global training loss after the last round)")
    print(f"total wall time {time.perf_counter() - start:.0f} s with {args.workers} workers")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
