"""Data-parallel plumbing over ``torch.distributed`` (gloo, CPU): process groups, gradient
all-reduce, and a launcher for several workers on this machine.

Two ways to get a process group:

* :func:`launch` starts ``workers`` processes here (``torch.multiprocessing``), with
  the environment ``torchrun`` would give them: ``MASTER_ADDR=127.0.0.1``, a free
  ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``. Tensors in the arguments travel through
  shared memory, so the data is loaded once, by the parent.
* :func:`init_from_env` joins the group that the environment describes, which is how
  several machines train together: start one process per worker with the same
  ``MASTER_ADDR`` (rank 0's host), ``MASTER_PORT`` and ``WORLD_SIZE`` and its own ``RANK``,
  by hand or with ``torchrun`` (which sets them from ``--rdzv-endpoint``).

Training (:mod:`fedge.central.train`) shards as ``DistributedSampler`` does: rank ``r`` of
``W`` takes positions ``r, r + W, r + 2W, ...`` of each global batch, so the shards are
disjoint, their union is the batch, and their sizes differ by at most one.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedge.errors import ConfigError, FedgeError, TrainingError
from fedge.traffic import AllReduceCounter

__all__ = ["Dist", "env_world", "free_port", "init_from_env", "launch"]

ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
TIMEOUT_ENV = "FEDGE_DIST_TIMEOUT"


def _timeout() -> datetime.timedelta:
    """How long a rank waits for the others (to join, or in a collective): 600 s, or
    ``$FEDGE_DIST_TIMEOUT`` seconds."""
    try:
        return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds") from None


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size`` (1: no process group).

    ``traffic`` counts the bytes of every all-reduce this process issues
    (:mod:`fedge.traffic`)."""

    rank: int = 0
    world_size: int = 1
    traffic: AllReduceCounter = field(default_factory=AllReduceCounter, compare=False)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes outputs and shows progress."""
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""
        if self.world_size > 1:
            self.traffic.add(tensor, self.world_size)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small objects and checkpoints)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def free_port() -> int:
    """A TCP port on the loopback interface with nothing listening on it now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` if the environment describes a process group of more than
    one process (``torchrun`` or hand-set variables), else ``None``."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "-1"))
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be integers") from None
    if world <= 1:
        return None
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing or not 0 <= rank < world:
        raise ConfigError(
            f"WORLD_SIZE={world} is set, so this process joins a distributed job, but "
            f"{', '.join(missing) or f'RANK={rank}'} is missing or out of range"
        )
    return rank, world


def init_from_env() -> Dist:
    """Join the gloo process group the environment describes (see the module docstring)."""
    world = env_world()
    if world is None:
        return Dist()
    rank, size = world
    dist.init_process_group(
        "gloo", init_method="env://", rank=rank, world_size=size, timeout=_timeout()
    )
    return Dist(rank, size)


def _loopback_interface() -> str | None:
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), None)


def _context() -> Any:
    """A forkserver context where there is one: the server imports torch and fedge once,
    and each worker is a fork of it that never ran a torch thread pool (forking a process
    that did is unsafe), which starts in well under a second instead of a fresh
    interpreter's several seconds of imports (spawn, the fallback)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # torch._dynamo: torch.optim imports it on first use (~2 s); matplotlib: rank 0 plots.
    ctx.set_forkserver_preload(
        [
            "fedge.central.jobs",
            "torch._dynamo",
            "matplotlib.figure",
            "matplotlib.backends.backend_agg",
        ]
    )
    return ctx


def _die_with_launcher(alive: multiprocessing.connection.Connection) -> None:
    """End this worker as soon as the process that launched it ends, even by SIGKILL, so
    that no orphan goes on training and writing the job's folder.

    ``alive`` is the read end of a pipe whose only write end the launcher holds: the kernel
    closes it when the launcher dies, however it dies, and a watchdog thread blocked on it
    then kills this worker. The parent-death signal alone would not do: a forkserver
    child's parent is the fork server, which outlives the launcher as long as its children
    run. It is set as well (Linux), for the spawn start method, where the parent is the
    launcher, and a killed fork server.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            alive.recv_bytes()  # the launcher never sends: this returns at end of file
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="fedge-launcher-watch", daemon=True).start()


def _worker(
    rank: int,
    env: dict[str, str],
    fn: Callable[..., None],
    args: tuple[Any, ...],
    errors: Any,
    alive: multiprocessing.connection.Connection,
) -> None:
    _die_with_launcher(alive)
    # A forkserver child has the environment the server started with: set what matters.
    os.environ.update(env, RANK=str(rank))
    world_size = int(env["WORLD_SIZE"])
    try:
        dist.init_process_group(
            "gloo", init_method="env://", rank=rank, world_size=world_size, timeout=_timeout()
        )
        try:
            fn(Dist(rank, world_size), *args)
        finally:
            dist.destroy_process_group()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except FedgeError as exc:
        errors.put((rank, exc))
        raise SystemExit(exc.exit_code) from None
    except BaseException as exc:
        errors.put(
            (rank, TrainingError(f"worker {rank} failed: {exc!r}\n{traceback.format_exc()}"))
        )
        raise SystemExit(1) from None


def launch(fn: Callable[..., None], args: tuple[Any, ...], workers: int) -> None:
    """Run ``fn(Dist(rank, workers), *args)`` in ``workers`` new processes on this machine.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function). Returns when
    every worker has finished; if one fails, the others are stopped and its error is
    raised here (the first one to fail, a :class:`FedgeError` as it was). The workers
    end with this process, also when it is killed.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(workers),
        TIMEOUT_ENV: str(_timeout().total_seconds()),
    }
    # Gloo binds to the interface of the host name, which need not be loopback.
    env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME") or _loopback_interface() or ""
    if not env["GLOO_SOCKET_IFNAME"]:
        del env["GLOO_SOCKET_IFNAME"]
    ctx = _context()
    errors = ctx.SimpleQueue()
    # Workers watch the read end; this process alone holds the write end (see
    # _die_with_launcher), until every worker has ended.
    alive, alive_w = ctx.Pipe(duplex=False)
    procs = [
        ctx.Process(target=_worker, args=(rank, env, fn, args, errors, alive), daemon=False)
        for rank in range(workers)
    ]
    for proc in procs:
        proc.start()
    alive.close()
    try:
        running = {proc.sentinel: proc for proc in procs}
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc = running.pop(sentinel)
                proc.join()
                if proc.exitcode != 0:
                    running.clear()
                    break
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        alive_w.close()
    failed = [proc for proc in procs if proc.exitcode != 0]
    if not failed:
        return
    if not errors.empty():
        _, exc = errors.get()
        raise exc
    raise TrainingError(
        f"a training worker exited with code {failed[0].exitcode} before reporting an error"
    )
