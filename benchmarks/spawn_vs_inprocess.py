"""The vectorized engine in this process and in a fresh ``multiprocessing`` spawn child.

Times the same workload (a few FedAvg rounds of LeNet on Fashion-MNIST, 10 clients per
round, the vectorized engine on all cores) in the parent and in a spawned child, back to
back and alternating, so that other load on the machine hits both alike; prints each
run's seconds per round and the threads each saw, then the child/parent ratio.

    python benchmarks/spawn_vs_inprocess.py [--repeats 3] [--rounds 3] [--baseline child]
        [--threads 0]

``--baseline child`` (or ``both``) first runs a one-thread PyTorch loop in the child (or
in both), as ``benchmarks/niid_fmnist.py`` does in its workers before the cases.
``--threads 0`` leaves the config's ``threads`` unset (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedge.config import parse_config
from fedge.sim.experiment import prepare, run


def _config(rounds: int, threads: int | None) -> dict:
    return {
        "name": "spawn-vs-inprocess",
        "rounds": rounds,
        "engine": "vectorized",
        **({"threads": threads} if threads else {}),
        "data": {"name": "fashion_mnist"},
        "partition": {"scheme": "iid", "num_clients": 100},
        "model": {"preset": "lenet"},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
        "server": {"clients_per_round": 10},
        "eval": {"every": rounds},
    }


def _baseline() -> None:
    """A short one-thread PyTorch loop, as niid_fmnist.py's workers run before a case."""
    torch.set_num_threads(1)
    x, w = torch.randn(256, 512), torch.randn(512, 512)
    for _ in range(200):
        x = torch.tanh(x @ w) * 0.1


def workload(rounds: int, baseline: bool, threads: int | None) -> dict:
    """Seconds per round of the vectorized engine, and the threads this process saw."""
    if baseline:
        _baseline()
    fed = prepare(parse_config(_config(rounds, threads)))
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    run(fed)
    seconds = (time.perf_counter() - start) / rounds
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds_per_round": seconds,
        "cpu_user": (after.ru_utime - before.ru_utime) / rounds,
        "cpu_sys": (after.ru_stime - before.ru_stime) / rounds,
        "minor_faults": (after.ru_minflt - before.ru_minflt) // rounds,
        "involuntary_switches": (after.ru_nivcsw - before.ru_nivcsw) // rounds,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", choices=["none", "child", "both"], default="none")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="config threads (0: leave unset)"
    )
    args = parser.parse_args()
    ctx = get_context("spawn")
    times: dict[str, list[float]] = {"parent": [], "child": []}
    in_child, in_parent = args.baseline != "none", args.baseline == "both"
    with ctx.Pool(1) as pool:
        pool.apply(workload, (1, in_child, args.threads))  # start-up, data loading: untimed
        workload(1, in_parent, args.threads)
        for i in range(args.repeats):
            order = ("parent", "child") if i % 2 == 0 else ("child", "parent")
            for where in order:
                if where == "parent":
                    out = workload(args.rounds, in_parent, args.threads)
                else:
                    out = pool.apply(workload, (args.rounds, in_child, args.threads))
                times[where].append(out["seconds_per_round"])
                print(f"{where:6} {out}", flush=True)
    for name, stat in (("median", statistics.median), ("min", min)):
        parent, child = stat(times["parent"]), stat(times["child"])
        print(f"{name} s/round: parent {parent:.3f}, child {child:.3f}, ratio {child / parent:.2f}")


if __name__ == "__main__":
    main()
