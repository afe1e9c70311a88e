"""How many torch threads a simulation uses when its config leaves ``threads`` unset.

PyTorch picks its thread count once per process (``$OMP_NUM_THREADS``, else the machine's
physical cores), and any later ``torch.set_num_threads`` changes it for the rest of the
process. A simulation that inherited that setting would run as fast as whatever ran
before it allowed: a spawned benchmark worker whose one-thread baseline ran first, a
process that trained a centralized job (one thread per worker) before a federated arm, a
child forked from a parent that had set one thread. The vectorized engine then gets a
single worker thread and trains about 1.7x slower on two cores (``benchmarks/RESULTS.md``,
"The vectorized engine in a spawned worker"). So :func:`default_threads` computes
PyTorch's default from the environment and the machine, the same in every process, and
:func:`fedge.sim.experiment.prepare` sets it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_threads"]


def _env_threads() -> int | None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs of ``/proc/cpuinfo``; ``None`` where it has none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def default_threads() -> int:
    """PyTorch's default thread count for a fresh process on this machine:
    ``$OMP_NUM_THREADS`` (or ``$MKL_NUM_THREADS``) when set, as Ray and batch schedulers
    set it to the CPUs they grant; else the physical cores, at most the CPUs this process
    may run on."""
    from_env = _env_threads()
    if from_env is not None:
        return from_env
    logical = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        logical = len(os.sched_getaffinity(0)) or logical
    return max(1, min(_physical_cores() or logical, logical))
