"""The Ray engine: clients train in long-lived Ray actors, locally or on a cluster.

For simulations that outgrow one machine. Each worker actor holds, for its whole life, the
model work area, the strategy and a reference to the federation's data, so a round only
ships what changes: the round's :class:`~fedge.fl.types.ClientTask` (put in the object
store once per round and passed by reference), a client index, that client's own state
and its step budget.

* **Data by reference.** :class:`~fedge.sim.engine.ClientData` goes into the object store
  once, as NumPy arrays (``x``, ``y``, every client's row indices concatenated, client
  sizes), when the engine is created. Each actor resolves that reference once, at start,
  and keeps the arrays: on one machine they stay in shared memory, zero-copy, so N workers
  do not hold N copies of the dataset. No task ever carries the data (the trap of client
  functions that close over a dataset and get it pickled into every message).
* **Same computation.** A worker runs :func:`~fedge.fl.local.train_client` with
  :func:`~fedge.fl.local.client_generator` ``(seed, round, k)`` on the same rows as
  :class:`~fedge.sim.engine.SequentialEngine`, so the global model agrees with the
  reference up to the order in which the server sums updates.
* **Streaming.** Updates are yielded as they complete (``ray.wait``); each worker has at
  most ``per_worker`` calls queued, so memory for in-flight results stays bounded.
* **One thread per worker.** Ray gives each actor one CPU; the actor sets torch to one
  thread (several one-thread processes outrun one process with several threads on CPU).

Ray is an optional dependency (``pip install "fedge[ray]"``). Connecting to a cluster
needs fedge installed on its nodes; ``ray://`` addresses need ``ray[client]``.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from types import ModuleType, TracebackType
from typing import Any

import numpy as np
import torch

from fedge.errors import ConfigError
from fedge.fl.local import LocalTraining, client_generator, train_client
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params
from fedge.models.spec import ModelSpec, build_model, fast_layout
from fedge.sim.engine import ClientData

__all__ = ["RayEngine"]

#: Seconds to wait for a TCP connection to a ``host:port`` cluster address before giving
#: up (Ray itself retries for minutes, then exits the process).
CONNECT_TIMEOUT = 5.0


def _import_ray() -> ModuleType:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(
            'engine "ray" needs Ray: pip install "ray>=2.9" (or the extra: "fedge[ray]")'
        ) from None


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` or ``ray://host:port`` address nobody listens on."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" or a form only Ray knows: Ray judges it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None


def _connect(ray: ModuleType, address: str | None) -> None:
    """Start a local Ray runtime (``address=None``) or connect to a running cluster."""
    # No usage statistics sent home, unless the user asked for them.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        # A new local runtime for this simulation ("local": even if a cluster runs here),
        # without dashboard, on loopback only.
        options.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        _check_reachable(address)
        options["address"] = address
    try:
        ray.init(**options)
    # Ray exits the process (SystemExit) when a cluster's control service never answers.
    except (ConnectionError, ValueError, RuntimeError, SystemExit) as exc:
        where = "start a local Ray runtime" if address is None else f"connect to {address!r}"
        raise ConfigError(f"cannot {where}: {exc}") from None


def _pack(data: ClientData) -> tuple[np.ndarray, ...]:
    """``data`` as four NumPy arrays, which Ray stores once and shares without copying."""
    sizes = data.sizes()
    rows = torch.cat(data.indices) if data.indices else torch.zeros(0, dtype=torch.int64)
    return (
        data.x.detach().contiguous().numpy(),
        data.y.detach().contiguous().numpy(),
        rows.contiguous().numpy(),
        sizes,
    )


def _unpack(arrays: tuple[np.ndarray, ...]) -> ClientData:
    """The inverse of :func:`_pack`; the tensors are views of the (read-only) arrays."""
    x, y, rows, sizes = arrays
    with warnings.catch_warnings():
        # Object-store arrays are read-only; training only gathers rows from them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x_t, y_t, rows_t = (torch.from_numpy(a) for a in (x, y, rows))
    return ClientData(x=x_t, y=y_t, indices=tuple(torch.split(rows_t, sizes.tolist())))


class _ClientWorker:
    """A Ray actor that trains clients: data, model work area and strategy stay put."""

    def __init__(self, spec: ModelSpec, local: LocalTraining, seed: int, data: list[Any]):
        import ray

        torch.set_num_threads(1)
        # ``data`` wraps the reference in a list so that this actor, not Ray's argument
        # resolution, fetches it: once, here, and keeps it for its whole life.
        self._data = _unpack(ray.get(data[0]))
        self._model = fast_layout(build_model(spec))
        self._local = local
        self._seed = seed
        self._strategy: Strategy | None = None
        self._stats = {"data_loads": 1, "clients": 0, "pid": os.getpid()}

    def set_strategy(self, strategy: Strategy) -> None:
        self._strategy = strategy

    def train(
        self,
        task: ClientTask,
        k: int,
        state: Mapping[str, Params] | None,
        max_steps: int | None,
    ) -> ClientUpdate:
        if self._strategy is None:
            raise RuntimeError("set_strategy must be called before train")
        x, y = self._data.client(k)
        own = task if state is None else replace(task, client_state=state)
        self._stats["clients"] += 1
        return train_client(
            self._model,
            self._strategy,
            own,
            x,
            y,
            self._local,
            client_generator(self._seed, task.round, k),
            client_index=k,
            max_steps=max_steps,
        )

    def stats(self) -> dict[str, int]:
        """``data_loads`` (times this actor fetched the data), ``clients`` trained, ``pid``."""
        return dict(self._stats)


class RayEngine:
    """Trains the sampled clients in Ray worker actors.

    Use it as a context manager or call :meth:`close`: the workers are stopped, and the
    Ray runtime too when this engine started it (a runtime that was already running when
    the engine was created, e.g. one the caller started, is left as it is).

    Parameters
    ----------
    spec, data, local, seed:
        As for :class:`~fedge.sim.engine.SequentialEngine`.
    address:
        ``None`` (default): start a local Ray runtime on this machine. Otherwise the
        address of a running cluster: ``"auto"``, ``"host:port"`` or
        ``"ray://host:port"`` (Ray Client). Ignored when Ray is already initialized in
        this process.
    workers:
        Number of worker actors, one CPU each; default: every CPU the cluster reports.
    per_worker:
        Calls queued on each worker at once (default 2, so a worker never waits for its
        next client while the server handles the previous update).

    Raises
    ------
    ConfigError
        Ray is not installed, the address is malformed or unreachable, or the cluster has
        fewer CPUs than ``workers``.
    """

    name = "ray"

    def __init__(
        self,
        spec: ModelSpec,
        data: ClientData,
        local: LocalTraining,
        *,
        seed: int,
        address: str | None = None,
        workers: int | None = None,
        per_worker: int = 2,
    ):
        ray = _import_ray()
        self._ray = ray
        self._owns_runtime = not ray.is_initialized()
        if self._owns_runtime:
            _connect(ray, address)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            count = cpus if workers is None else workers
            if not 1 <= count <= cpus:
                raise ConfigError(
                    f"ray_workers={count} needs as many CPUs, the Ray cluster has {cpus}"
                )
            if per_worker < 1:
                raise ConfigError(f"per_worker must be >= 1, got {per_worker}")
            self.data = data
            self.per_worker = per_worker
            self._data_ref = ray.put(_pack(data))
            actor = ray.remote(num_cpus=1)(_ClientWorker)
            self._workers = [
                actor.remote(spec, local, seed, [self._data_ref]) for _ in range(count)
            ]
        except BaseException:
            self._workers = []
            self.close()
            raise
        self._strategy: Strategy | None = None

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def _send_strategy(self, strategy: Strategy) -> None:
        """Ship ``strategy`` to every worker, once (again only if a new one is passed)."""
        if strategy is self._strategy:
            return
        ref = self._ray.put(strategy)
        try:
            self._ray.get([w.set_strategy.remote(ref) for w in self._workers])
        except self._ray.exceptions.RayActorError as exc:
            raise ConfigError(
                f"Ray workers failed to start (is fedge installed on every node?): {exc}"
            ) from None
        self._strategy = strategy

    def train_round(
        self,
        strategy: Strategy,
        task: ClientTask,
        clients: Sequence[int],
        *,
        states: Mapping[int, Mapping[str, Params]] | None = None,
        max_steps: Mapping[int, int] | None = None,
    ) -> Iterator[ClientUpdate]:
        """Yield each client's update as soon as a worker returns it (in completion order).

        ``states`` and ``max_steps`` as for
        :meth:`~fedge.sim.engine.SequentialEngine.train_round`.
        """
        if not self._workers:
            raise RuntimeError("this RayEngine is closed")
        ray = self._ray
        self._send_strategy(strategy)
        task_ref = ray.put(task)
        queue = deque(int(k) for k in clients)
        load = [0] * len(self._workers)
        running: dict[Any, int] = {}  # result reference -> worker index

        def submit() -> None:
            while queue:
                i = min(range(len(load)), key=load.__getitem__)
                if load[i] >= self.per_worker:
                    return
                k = queue.popleft()
                state = states.get(k) if states else None
                budget = max_steps.get(k) if max_steps else None
                ref = self._workers[i].train.remote(task_ref, k, state, budget)
                running[ref] = i
                load[i] += 1

        submit()
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            load[running.pop(ref)] -= 1
            submit()
            yield ray.get(ref)

    def worker_stats(self) -> list[dict[str, int]]:
        """Each worker's :meth:`_ClientWorker.stats` (for tests and diagnostics)."""
        return self._ray.get([w.stats.remote() for w in self._workers])

    def close(self) -> None:
        """Stop the workers, free the data, and shut Ray down if this engine started it."""
        ray = self._ray
        if ray.is_initialized():
            for worker in getattr(self, "_workers", []):
                ray.kill(worker)
        self._workers = []
        self._data_ref = None
        if self._owns_runtime and ray.is_initialized():
            ray.shutdown()
        self._owns_runtime = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
