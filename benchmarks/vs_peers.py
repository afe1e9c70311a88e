"""fedge against Flower and Apple's pfl on the same federated workloads (issue 6).

Two workloads on Fashion-MNIST with NIID-Bench's LeNet-style CNN and FedAvg weighted by
sample count:

* cross-device: 1,000 clients, Dirichlet(0.5) labels, 50 per round, E=1, B=10, SGD lr 0.1;
* cross-silo: 100 clients, Dirichlet(0.5) labels, 10 per round, E=1, B=32, SGD lr 0.01
  with momentum 0.9.

Every framework trains exactly the same thing: this script computes, per seed, the
partition (``fedge.data.partition.dirichlet``), every round's cohort of K distinct clients
(``fedge.fl.sampling.sample_clients``) and the initial weights (``build_model(spec,
seed)``), and hands them to each framework's runner in a job file; the peers also draw
each client's batches from fedge's per-client random stream. So the final models should
agree up to floating-point summation order, which the script checks (``Δw``: largest
absolute weight difference from fedge's sequential engine), and the test accuracy of every
final model is measured here by the same code.

Each framework runs in its own process (tree), so that imports and peak memory are its
own: fedge in this environment (engines sequential, vectorized and ray), Flower
(``flwr[simulation]``: run_simulation, Ray backend, one CPU per ClientApp) and pfl
(``pfl[pytorch]``: one process, clients one after another; ``pfl-2proc``: two processes
under ``torch.distributed.run``) in their own virtual environments, which this script
creates on first use under ``--venvs`` (torch 2.13.0 first, from the local CPU wheel; then
the peer with ``torch==2.13.0`` pinned again so that pip never swaps it). Peer code lives
in ``benchmarks/peers/``: the clients load the training set once per process or Ray worker
and receive only their client index; nothing is captured in a closure that Ray would
pickle into every task.

Measured per framework and workload: seconds per round (all rounds, and warm rounds =
without the first), client updates and training examples per second (warm rounds; all
rounds in the JSON), peak memory of the whole process tree (sum of RSS, and of PSS, which
counts pages shared between processes once; sampled every 0.2 s), wall time of the process
(imports, start-up, data loading, rounds), and the test accuracy after ``--rounds`` rounds,
mean ± std over ``--seeds`` seeds. Timings are medians over seeds × ``--repetitions``,
memory the largest peak. Plain single-process PyTorch on the same CNN is measured in the
same run at each workload's batch size (the better of one thread and torch's default).
Then the ratios of every fedge engine to every peer and to plain PyTorch.

Single-process runs (fedge's sequential and vectorized engines, pfl) use torch's default
number of threads unless ``--threads`` is given; multi-process ones (Ray workers, Flower's
actors, pfl-2proc's ranks) one thread per process. The machine should be otherwise idle:
with the cores busy, multi-threaded runs slow down far more than single-threaded ones.
Flower averages whole weights in float32 in the order replies arrive, so its Δw varies
from run to run (1e-7 to 1e-4 after a few rounds were seen); the others are deterministic.

    python benchmarks/vs_peers.py                                  # everything (long)
    python benchmarks/vs_peers.py --workloads cross-silo --rounds 2 --seeds 1   # a smoke test
    python benchmarks/vs_peers.py --frameworks fedge-vectorized pfl --repetitions 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.data.fashion_mnist import load_fashion_mnist
from fedge.data.partition import dirichlet
from fedge.fl.local import evaluate
from fedge.fl.sampling import sample_clients
from fedge.models.spec import build_model, preset_spec

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Workload:
    clients: int
    per_round: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    beta: float = 0.5


WORKLOADS = {
    "cross-device": Workload(
        clients=1000, per_round=50, epochs=1, batch_size=10, lr=0.1, momentum=0
    ),
    "cross-silo": Workload(
        clients=100, per_round=10, epochs=1, batch_size=32, lr=0.01, momentum=0.9
    ),
}

# framework -> (virtual environment or None for this one, how to start its runner)
FRAMEWORKS: dict[str, tuple[str | None, list[str]]] = {
    "fedge-sequential": (None, ["run_fedge.py"]),
    "fedge-vectorized": (None, ["run_fedge.py"]),
    "fedge-ray": (None, ["run_fedge.py"]),
    "flower": ("flower", ["run_flower.py"]),
    "pfl": ("pfl", ["run_pfl.py"]),
    "pfl-2proc": (
        "pfl",
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "run_pfl.py"],
    ),
}
DEFAULT_FRAMEWORKS = list(FRAMEWORKS)
# virtual environment -> (pip requirement, module whose import proves the install)
VENVS = {"flower": ("flwr[simulation]", "flwr.simulation"), "pfl": ("pfl[pytorch]", "pfl")}


# --- virtual environments ----------------------------------------------------------------


def ensure_venv(name: str, root: Path) -> tuple[Path | None, dict[str, Any]]:
    """The Python of the peer's virtual environment, created and installed if missing
    (``None`` if that fails), and what it took."""
    venv = root / f"venv-{name}"
    python, marker = venv / "bin" / "python", venv / ".fedge-bench-ok"
    requirement, module = VENVS[name]
    if marker.is_file():
        info = json.loads(marker.read_text())
        print(
            f"{name}: {venv} ({', '.join(info['packages'])}; installed in "
            f"{info['install_seconds']:.0f} s, {info['size_mb']} MB)",
            flush=True,
        )
        return python, info
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"install-{name}.log"
    print(f"installing {requirement} into {venv} (log: {log}) ...", flush=True)
    start = time.perf_counter()
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        # torch first, alone: the CPU build from the local wheel; then the peer with
        # torch pinned again so that the resolver keeps it (never a CUDA build).
        [str(python), "-m", "pip", "install", TORCH],
        [str(python), "-m", "pip", "install", TORCH, requirement, "numpy"],
        [
            str(python),
            "-c",
            f"import torch, {module}; assert torch.__version__.startswith('2.13.0')",
        ],
    ]
    with log.open("w") as fh:
        for step in steps:
            fh.write(f"$ {' '.join(step)}\n")
            fh.flush()
            if subprocess.run(step, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
                print(f"{name}: installing {requirement} failed; skipped (see {log})", flush=True)
                return None, {}
    versions = subprocess.run(
        [str(python), "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout.split()
    info = {
        "install_seconds": round(time.perf_counter() - start, 1),
        "size_mb": round(_tree_bytes(venv) / 2**20),
        "packages": [
            v
            for v in versions
            if v.split("==")[0].lower() in {"torch", "flwr", "pfl", "ray", "numpy"}
        ],
    }
    marker.write_text(json.dumps(info))
    print(f"{name}: installed in {info['install_seconds']:.0f} s, {info['size_mb']} MB", flush=True)
    return python, info


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


# --- process-tree memory -----------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


def _processes() -> tuple[dict[int, int], dict[int, int]]:
    """Parent and session id of every process."""
    parent, session = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        pid = int(entry.name)
        parent[pid], session[pid] = int(fields[1]), int(fields[3])
    return parent, session


def _session(sid: int) -> list[int]:
    return [pid for pid, s in _processes()[1].items() if s == sid]


def _tree(root: int) -> list[int]:
    """``root`` and every process descending from it or in its session (Ray daemons)."""
    parent, session = _processes()
    found = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if pid not in found and (ppid in found or session[pid] == root):
                found.add(pid)
                changed = True
    return [p for p in found if p in parent]


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; zeros if it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
        return rss, pss
    except (OSError, ValueError, IndexError):
        return 0, 0


class TreeMemory(threading.Thread):
    """Samples the summed RSS and PSS of a process tree every ``interval`` seconds and
    keeps the peaks; also remembers every process it saw (to clean up after)."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.seen: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            self.seen.update(pids)
            rss = pss = 0
            for pid in pids:
                r, p = _memory(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.done.wait(self.interval)


def run_monitored(cmd: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` (a new session) with its output in ``log``; its exit code, wall time
    and the peak memory of its process tree."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        monitor = TreeMemory(proc.pid)
        monitor.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        wall = time.perf_counter() - start
        monitor.done.set()
        monitor.join()
    # Whatever the runner left behind in its session (a timed-out run, a Ray daemon), by
    # process id: only processes this run started and that are still in its session.
    for pid in sorted(monitor.seen & set(_session(proc.pid))):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return {
        "returncode": code,
        "wall_seconds": wall,
        "peak_rss_mb": monitor.peak_rss / 2**20,
        "peak_pss_mb": monitor.peak_pss / 2**20,
    }


# --- jobs --------------------------------------------------------------------------------


def write_arrays(path: Path, w: Workload, labels: np.ndarray, seed: int, rounds: int) -> list:
    """The job's arrays for one workload and seed; returns each round's training examples
    (the cohort's samples × epochs)."""
    parts = dirichlet(labels, w.clients, beta=w.beta, seed=seed)
    schedule = np.stack(
        [sample_clients(w.clients, w.per_round, seed=seed, round=r) for r in range(1, rounds + 1)]
    )
    model = build_model(preset_spec("lenet", (1, 28, 28), 10), seed=seed)
    init = {f"p{i}": p.detach().numpy() for i, p in enumerate(model.parameters())}
    sizes = np.array([len(p) for p in parts])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    np.savez(path, rows=np.concatenate(parts), offsets=offsets, schedule=schedule, **init)
    return [int(sizes[c].sum()) * w.epochs for c in schedule]


def load_params(path: Path) -> list[torch.Tensor]:
    with np.load(path) as arrays:
        return [torch.from_numpy(arrays[f"p{i}"]) for i in range(len(arrays.files))]


class Evaluator:
    """Test accuracy of a final model, the same code for every framework."""

    def __init__(self) -> None:
        self.test = load_fashion_mnist().test
        self.model = build_model(preset_spec("lenet", (1, 28, 28), 10))
        self.names = [n for n, _ in self.model.named_parameters()]

    def __call__(self, params: list[torch.Tensor]) -> tuple[float, float]:
        """(test loss, test accuracy)."""
        named = dict(zip(self.names, params, strict=True))
        return evaluate(self.model, self.test.x, self.test.y, params=named, batch_size=2048)


# --- summaries ---------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], w: Workload) -> dict[str, Any]:
    """Per-framework numbers over its runs (seeds × repetitions): medians of timings, max
    of peak memory, mean and std of accuracy over seeds."""
    ok = [r for r in runs if r.get("round_seconds")]
    if not ok:
        return {"runs": len(runs), "failed": len(runs)}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in ok)

    for r in ok:
        secs, samples = r["round_seconds"], r["samples"]
        warm = slice(1, None) if len(secs) > 1 else slice(None)
        r["seconds_per_round"] = sum(secs) / len(secs)
        r["seconds_per_round_warm"] = sum(secs[warm]) / len(secs[warm])
        r["updates_per_second"] = w.per_round * len(secs) / sum(secs)
        r["updates_per_second_warm"] = w.per_round * len(secs[warm]) / sum(secs[warm])
        r["samples_per_second"] = sum(samples) / sum(secs)
        r["samples_per_second_warm"] = sum(samples[warm]) / sum(secs[warm])
    by_seed: dict[int, list[float]] = {}
    for r in ok:
        by_seed.setdefault(r["seed"], []).append(r["accuracy"])
    accs = [statistics.mean(v) for v in by_seed.values()]
    diffs = [
        r["max_abs_diff_vs_sequential"]
        for r in ok
        if r.get("max_abs_diff_vs_sequential") is not None
    ]
    keys = [
        "seconds_per_round",
        "seconds_per_round_warm",
        "updates_per_second",
        "updates_per_second_warm",
        "samples_per_second",
        "samples_per_second_warm",
        "wall_seconds",
    ]
    return {
        "runs": len(runs),
        "failed": len(runs) - len(ok),
        **{k: med(k) for k in keys},
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "peak_pss_mb": max(r["peak_pss_mb"] for r in ok),
        "accuracy_mean": statistics.mean(accs),
        "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "max_abs_diff_vs_sequential": max(diffs) if diffs else None,
        "version": ok[0].get("version"),
    }


def print_table(name: str, w: Workload, table: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{name}: {w.clients} clients, {w.per_round} per round, E={w.epochs}, "
        f"B={w.batch_size}, lr {w.lr}, momentum {w.momentum}"
    )
    head = (
        f"{'framework':<17} {'s/round':>8} {'warm':>7} {'upd/s':>7} {'samples/s':>10} "
        f"{'RSS MB':>7} {'PSS MB':>7} {'wall s':>7} {'accuracy %':>12} {'Δw vs seq':>9}"
    )
    print(head)
    print("-" * len(head))
    for fw, s in table.items():
        if "accuracy_mean" not in s:
            print(f"{fw:<17} failed ({s.get('failed', 0)} of {s.get('runs', 0)} runs; see logs)")
            continue
        diff = s["max_abs_diff_vs_sequential"]
        print(
            f"{fw:<17} {s['seconds_per_round']:8.3f} {s['seconds_per_round_warm']:7.3f} "
            f"{s['updates_per_second_warm']:7.1f} {s['samples_per_second_warm']:10,.0f} "
            f"{s['peak_rss_mb']:7.0f} {s['peak_pss_mb']:7.0f} {s['wall_seconds']:7.1f} "
            f"{100 * s['accuracy_mean']:7.2f}±{100 * s['accuracy_std']:<4.2f} "
            f"{'-' if diff is None else f'{diff:.1e}':>9}"
        )


def ratios(table: dict[str, dict[str, Any]], plain: float | None) -> dict[str, dict[str, Any]]:
    """Each fedge engine against each peer (client updates per second in warm rounds and
    in all rounds, accuracy gap in points, peak PSS) and against plain PyTorch (training
    examples per second in warm rounds)."""
    done = {fw: s for fw, s in table.items() if "accuracy_mean" in s}
    out: dict[str, dict[str, Any]] = {}
    for fw, s in done.items():
        if not fw.startswith("fedge"):
            continue
        out[fw] = {
            peer: {
                "updates_per_second_warm": s["updates_per_second_warm"]
                / p["updates_per_second_warm"],
                "updates_per_second": s["updates_per_second"] / p["updates_per_second"],
                "accuracy_gap_points": 100 * (s["accuracy_mean"] - p["accuracy_mean"]),
                "peak_pss": s["peak_pss_mb"] / p["peak_pss_mb"],
            }
            for peer, p in done.items()
            if not peer.startswith("fedge")
        }
        if plain:
            out[fw]["plain PyTorch"] = {
                "samples_per_second_warm": s["samples_per_second_warm"] / plain
            }
    return out


def print_ratios(rel: dict[str, dict[str, Any]], batch_size: int) -> None:
    print("ratios (fedge / other; throughput of warm rounds, all rounds in brackets):")
    for fw, against in rel.items():
        for other, r in against.items():
            if other == "plain PyTorch":
                print(
                    f"  {fw} / plain PyTorch at batch {batch_size}: samples/s "
                    f"{r['samples_per_second_warm']:.2f}x"
                )
                continue
            print(
                f"  {fw} / {other}: updates/s {r['updates_per_second_warm']:.2f}x "
                f"({r['updates_per_second']:.2f}x), accuracy {r['accuracy_gap_points']:+.2f} pt, "
                f"peak PSS {r['peak_pss']:.2f}x"
            )


# --- main --------------------------------------------------------------------------------


def measure_plain(args: argparse.Namespace, batches: list[int]) -> dict[int, float]:
    """Plain single-process PyTorch's training examples per second at each batch size: the
    best of one thread and torch's default (or ``--threads`` alone)."""
    best: dict[int, float] = {}
    for threads in [args.threads] if args.threads else [1, 0]:
        out = args.workdir / f"plain-{threads}.json"
        cmd = [sys.executable, str(PEERS / "plain_torch.py"), str(out), str(args.plain_seconds)]
        cmd += [str(threads), *map(str, batches)]
        run = run_monitored(cmd, args.workdir / "logs" / f"plain-{threads}.log", args.timeout)
        if run["returncode"] != 0:
            print(f"plain PyTorch ({threads} threads): failed; see the log", flush=True)
            continue
        rates = json.loads(out.read_text())
        for b, v in rates["samples_per_second"].items():
            best[int(b)] = max(best.get(int(b), 0.0), v)
        print(
            f"plain PyTorch, one process, {rates['threads']} thread(s): "
            + ", ".join(
                f"{v:,.0f} samples/s at batch {b}" for b, v in rates["samples_per_second"].items()
            ),
            flush=True,
        )
    return best


def run_framework(
    fw: str, python: Path, job: dict[str, Any], tag: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One run of one framework on one job: timings, memory and the final weights."""
    job_path, out = args.workdir / f"{tag}.json", args.workdir / f"{tag}.out.json"
    out.unlink(missing_ok=True)
    job = {**job, "framework": fw, "out": str(out)}
    job["engine"] = fw.removeprefix("fedge-") if fw.startswith("fedge") else None
    job_path.write_text(json.dumps(job))
    launcher = FRAMEWORKS[fw][1]
    cmd = [str(python), *launcher[:-1], str(PEERS / launcher[-1]), str(job_path)]
    log = args.workdir / "logs" / f"{tag}.log"
    run = run_monitored(cmd, log, args.timeout)
    if run["returncode"] == 0 and out.is_file():
        run.update(json.loads(out.read_text()))
        run["params"] = load_params(out.with_suffix(".npz"))
    else:
        print(f"  {tag}: failed (exit {run['returncode']}); see {log}", flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument(
        "--frameworks", nargs="+", default=DEFAULT_FRAMEWORKS, choices=list(FRAMEWORKS)
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument(
        "--repetitions", type=int, default=1, help="runs of every (framework, seed) for timing"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of single-process runs and plain PyTorch (0: torch's default)",
    )
    parser.add_argument("--plain-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "fedge-bench")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "vs_peers")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON results (default: WORKDIR/results.json)"
    )
    args = parser.parse_args()
    out_path = args.out or args.workdir / "results.json"
    (args.workdir / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}; {os.cpu_count()} CPUs; torch {torch.__version__}")

    pythons: dict[str | None, Path | None] = {None: Path(sys.executable)}
    installs: dict[str, Any] = {}
    for fw in args.frameworks:
        venv = FRAMEWORKS[fw][0]
        if venv is not None and venv not in pythons:
            pythons[venv], installs[venv] = ensure_venv(venv, args.venvs)
    frameworks = [fw for fw in args.frameworks if pythons[FRAMEWORKS[fw][0]] is not None]

    plain = measure_plain(args, sorted({WORKLOADS[n].batch_size for n in args.workloads}))
    labels = load_fashion_mnist().train.y.numpy()
    evaluator = Evaluator()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "cpus": os.cpu_count(),
        "installs": installs,
        "plain_pytorch_samples_per_second": plain,
        "workloads": {},
    }
    for name in args.workloads:
        w = WORKLOADS[name]
        runs: dict[str, list[dict[str, Any]]] = {fw: [] for fw in frameworks}
        for seed in range(args.seeds):
            arrays = args.workdir / f"{name}-seed{seed}.npz"
            samples = write_arrays(arrays, w, labels, seed, args.rounds)
            job = {"seed": seed, "rounds": args.rounds, "threads": args.threads or None}
            job.update(arrays=str(arrays), **asdict(w))
            for rep in range(args.repetitions):
                reference = None
                # Frameworks interleaved, so that a noisy stretch of time hits them all.
                for fw in frameworks:
                    tag = f"{name}-{fw}-seed{seed}-rep{rep}"
                    run = run_framework(fw, pythons[FRAMEWORKS[fw][0]], job, tag, args)
                    run.update(seed=seed, repetition=rep, samples=samples)
                    params = run.pop("params", None)
                    runs[fw].append(run)
                    if params is None:
                        continue
                    run["test_loss"], run["accuracy"] = evaluator(params)
                    if fw == "fedge-sequential":
                        reference = params
                    if reference is not None:
                        run["max_abs_diff_vs_sequential"] = max(
                            float((a - b).abs().max())
                            for a, b in zip(params, reference, strict=True)
                        )
                    secs = run["round_seconds"]
                    print(
                        f"  {tag}: {sum(secs) / len(secs):.3f} s/round, "
                        f"accuracy {100 * run['accuracy']:.2f}%, peak {run['peak_pss_mb']:.0f} MB "
                        f"PSS, wall {run['wall_seconds']:.1f} s",
                        flush=True,
                    )
        table = {fw: summarize(runs[fw], w) for fw in frameworks}
        print_table(name, w, table)
        rel = ratios(table, plain.get(w.batch_size))
        print_ratios(rel, w.batch_size)
        for rs in runs.values():
            for r in rs:
                r.pop("samples")
        results["workloads"][name] = {
            "workload": asdict(w),
            "summary": table,
            "ratios": rel,
            "runs": runs,
        }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; results in {out_path}")


if __name__ == "__main__":
    main()
