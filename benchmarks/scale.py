"""Scale: 10,000 clients with 1,000 sampled per round on one machine (issue 6).

Synthetic(1, 1) of FedProx/LEAF with 10,000 devices (lognormal sizes: about 4.5 million
examples of 60 features in all, a few devices with tens of thousands) and multinomial
logistic regression, or Fashion-MNIST split IID over 10,000 clients (6 examples each) with
the LeNet-style CNN. FedAvg, E=1, B=10, SGD lr 0.01, 1,000 clients per round, server-side
evaluation after every round.

Each engine runs in a fresh process, so its peak resident memory (``ru_maxrss``: the data,
the partition, the engine's stacked chunks) is its own. The sequential engine runs the same
rounds as the baseline, so the vectorized engine's speed is a ratio measured in this run.
The budget to meet is 8 GiB.

    python benchmarks/scale.py                           # synthetic, 5 rounds, both engines
    python benchmarks/scale.py --data fashion_mnist --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from common import ROOT, in_parallel

from fedge.config import apply_overrides, parse_config
from fedge.sim.experiment import prepare, run

BUDGET_MIB = 8 * 1024
DATA = {
    "synthetic": {
        "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_devices": 10_000},
        "model": {"preset": "logreg"},
    },
    "fashion_mnist": {
        "data": {"name": "fashion_mnist"},
        "partition": {"scheme": "iid", "num_clients": 10_000},
        "model": {"preset": "lenet"},
    },
}


def run_case(data: str, engine: str, rounds: int, seed: int) -> dict:
    """One run in this (fresh) worker process; returns timings and peak memory."""
    t0 = time.perf_counter()
    raw = {
        "name": f"scale-{data}-{engine}",
        "seed": seed,
        "rounds": rounds,
        "engine": engine,
        "client": {"epochs": 1, "batch_size": 10, "lr": 0.01},
        "server": {"clients_per_round": 1000},
        **DATA[data],
    }
    fed = prepare(parse_config(apply_overrides(raw, []), f"scale {data}"))
    prepared = time.perf_counter() - t0
    rss_prepared = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = run(fed)
    history = result.history
    return {
        "data": data,
        "engine": engine,
        "clients": len(fed.partition),
        "examples": int(sum(len(p) for p in fed.partition)),
        "prepare_seconds": prepared,
        "seconds_per_round": [m["seconds"] for m in history],
        "train_seconds_per_round": [m["clients"] / m["clients_per_second"] for m in history],
        "examples_per_round": statistics.mean(m["samples"] for m in history),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_after_prepare_mib": rss_prepared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic", choices=list(DATA))
    parser.add_argument("--engines", nargs="+", default=["vectorized", "sequential"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale.json")
    args = parser.parse_args()

    results = {}
    for engine in args.engines:  # one at a time: each has the whole machine
        jobs = [(args.data, engine, args.rounds, args.seed)]
        r = next(in_parallel(run_case, jobs, workers=1))
        results[engine] = r
        rounds = r["seconds_per_round"]
        train = r["train_seconds_per_round"]
        warm = statistics.median(train[1:]) if len(train) > 1 else train[0]
        r["warm_train_seconds_per_round"] = warm
        verdict = "within" if r["peak_rss_mib"] <= BUDGET_MIB else "OVER"
        print(
            f"{args.data} {engine}: {r['clients']:,} clients, {r['examples']:,} examples; "
            f"prepare {r['prepare_seconds']:.1f} s; rounds "
            f"{', '.join(f'{s:.2f}' for s in rounds)} s with evaluation; training of warm "
            f"rounds {warm:.2f} s ({1000 / warm:,.0f} client updates/s, "
            f"{r['examples_per_round'] / warm:,.0f} examples/s); accuracy "
            f"{100 * r['final_test_accuracy']:.2f}%; peak RSS "
            f"{r['peak_rss_mib']:,.0f} MiB ({verdict} the {BUDGET_MIB:,} MiB budget; "
            f"{r['peak_rss_after_prepare_mib']:,.0f} MiB reached while preparing the data)",
            flush=True,
        )
    if "vectorized" in results and "sequential" in results:
        ratio = (
            results["sequential"]["warm_train_seconds_per_round"]
            / results["vectorized"]["warm_train_seconds_per_round"]
        )
        print(f"vectorized / sequential: {ratio:.2f}x client updates per second (warm rounds)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
