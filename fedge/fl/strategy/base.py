"""The interface every federated algorithm implements: both halves in one object.

Server half
    :meth:`Strategy.client_task` says what every sampled client starts from;
    :meth:`Strategy.aggregate` turns the round's updates into the next global state:
    client deltas Δ_k = w_k − w are combined by the strategy's :class:`Aggregator`
    (weighted mean by default, or a robust rule) and applied by its
    :class:`ServerOptimizer` (w + Δ by default).
Client half
    :meth:`Strategy.grad_correction` (a term added to the loss gradient) and
    :meth:`Strategy.step_correction` (a drift subtracted after the optimizer step) are
    applied at every local step by the one local optimizer in :mod:`fedge.fl.local`, so
    no engine or client can forget them; :meth:`Strategy.finish_client` adds what the client reports
    beyond its weights (e.g. SCAFFOLD's Δc) and its new own state.

Sum path (secure aggregation)
    Under secure aggregation the server sees only the sum of what clients send. A client
    computes its summands with :meth:`Strategy.secure_parts` (flat float64 tensors, e.g.
    ω_k·Δ_k and ω_k), and the server turns the sums into the next state with
    :meth:`Strategy.apply_sums`. :meth:`Strategy.check_sum_path` refuses what needs
    individual updates (robust aggregators).

Methods are pure functions of their arguments: no I/O, no threads, and nothing stored on
the object between calls. Per-client state travels in :attr:`ClientTask.client_state`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar

import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.aggregators import Aggregator, WeightedMean
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.types import (
    ClientTask,
    ClientUpdate,
    Params,
    ServerState,
    clone_params,
    flatten_by_name,
    unflatten_by_name,
)

if TYPE_CHECKING:
    from fedge.fl.local import LocalTraining

__all__ = ["Strategy", "Wrapper"]


class Strategy:
    """Base class of federated algorithms; with no override it is FedAvg.

    Parameters
    ----------
    aggregator:
        How client deltas are combined (default :class:`WeightedMean` by n_k).
    server_optimizer:
        How the combined delta moves the global model (default w ← w + Δ).
    """

    name: ClassVar[str] = "strategy"
    #: Whether a client that ran fewer local steps than asked (a straggler) still
    #: contributes; strategies that cannot use partial work have stragglers dropped.
    accepts_partial_work: ClassVar[bool] = False

    def __init__(
        self,
        *,
        aggregator: Aggregator | None = None,
        server_optimizer: ServerOptimizer | None = None,
    ):
        self.aggregator: Aggregator = aggregator if aggregator is not None else WeightedMean()
        self.server_optimizer = (
            server_optimizer if server_optimizer is not None else (ServerOptimizer())
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(aggregator={self.aggregator!r}, "
            f"server_optimizer={self.server_optimizer!r})"
        )

    # --- server half ------------------------------------------------------------------

    def init(self, params: Params) -> ServerState:
        """The server state before round 1, starting from ``params``."""
        params = clone_params(params)
        return ServerState(
            params=params, rounds_completed=0, extras=self.server_optimizer.init(params)
        )

    def client_task(self, state: ServerState) -> ClientTask:
        """What every client sampled in the next round starts from."""
        return ClientTask(round=state.rounds_completed + 1, params=state.params)

    def client_deltas(
        self, state: ServerState, updates: Iterable[ClientUpdate]
    ) -> Iterator[tuple[Params, float]]:
        """``(w_k − w, n_k)`` for each update, lazily."""
        for update in updates:
            delta = {k: update.params[k] - state.params[k] for k in state.params}
            yield delta, float(update.num_samples)

    def combine(self, state: ServerState, updates: Iterable[ClientUpdate]) -> Params:
        """The round's delta: the aggregator over :meth:`client_deltas`."""
        return self.aggregator(self.client_deltas(state, updates))

    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        """The next global state from the round's client updates.

        ``updates`` may be a one-pass iterator: the default aggregator consumes it with a
        running sum, so memory does not grow with the number of clients.
        """
        return self.apply_delta(state, self.combine(state, updates))

    def apply_delta(self, state: ServerState, delta: Params) -> ServerState:
        """The next state after the server optimizer applies the round's ``delta``."""
        opt_state = {k: v for k, v in state.extras.items() if k.startswith("opt.")}
        params, opt_state = self.server_optimizer.step(state.params, delta, opt_state)
        kept = {k: v for k, v in state.extras.items() if not k.startswith("opt.")}
        return ServerState(
            params=params, rounds_completed=state.rounds_completed + 1, extras={**kept, **opt_state}
        )

    def reported_extras(self, state: ServerState) -> dict[str, Params]:
        """What a client reports beyond its weights, as reference tensors by group (names,
        shapes and dtypes to check uploads against); nothing by default."""
        return {}

    # --- sum path (secure aggregation) -----------------------------------------------

    def check_sum_path(self) -> None:
        """Refuse aggregation that needs individual updates, which a sum cannot give."""
        if not isinstance(self.aggregator, WeightedMean):
            raise ConfigError(
                f"secure aggregation needs the mean aggregator, got "
                f"{type(self.aggregator).__name__}: robust aggregators and per-update norm "
                "bounds look at individual updates, and the server only sees their sum"
            )

    def sum_bounds(
        self, state: ServerState, clip_range: float
    ) -> dict[str, tuple[int, float, float]]:
        """``name → (length, lo, hi)`` of each summand :meth:`secure_parts` returns: the
        interval its values are encoded in (``clip_range`` bounds delta coordinates)."""
        length = sum(t.numel() for t in state.params.values())
        return {"delta": (length, -clip_range, clip_range), "weight": (1, 0.0, 1.0)}

    def secure_parts(
        self,
        task: ClientTask,
        update: ClientUpdate,
        weight: float,
        clip_norm: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """What one client adds to the round's sum: ω·Δ and ω, for its weight ω in (0, 1]
        (``clip_norm`` is for strategies that clip on the client, i.e. DP)."""
        mine = flatten_by_name(update.params, task.params).to(torch.float64)
        delta = mine - flatten_by_name(task.params).to(torch.float64)
        return {
            "delta": delta * weight,
            "weight": torch.tensor([weight], dtype=torch.float64),
        }

    def apply_sums(
        self, state: ServerState, sums: dict[str, torch.Tensor], count: int
    ) -> ServerState:
        """The next state from the sums of ``count`` clients' :meth:`secure_parts`:
        the weighted mean delta Σω·Δ / Σω through the server optimizer."""
        total = float(sums["weight"][0])
        if not total > 0:
            raise FedgeError("the round's summed weight is not positive: nothing to average")
        return self.apply_delta(state, unflatten_by_name(sums["delta"] / total, state.params))

    # --- client half ------------------------------------------------------------------

    def grad_correction(self, params: Params, task: ClientTask) -> Params | None:
        """A term added to the loss gradient at every local step (``None``: nothing).

        ``params`` are the client's current weights. Must be a pure tensor function so
        that batched engines can vectorize it.
        """
        return None

    def step_correction(self, params: Params, task: ClientTask) -> Params | None:
        """A term subtracted from the weights, times the learning rate, after every local
        optimizer step (``None``: nothing).

        Unlike :meth:`grad_correction` it bypasses momentum and weight decay: a constant
        drift such as SCAFFOLD's c − c_i would otherwise be amplified 1/(1 − momentum)
        times. Same purity rules as :meth:`grad_correction`.
        """
        return None

    def finish_client(
        self, task: ClientTask, update: ClientUpdate, local: LocalTraining
    ) -> ClientUpdate:
        """Complete a client's report after local training (default: unchanged)."""
        return update


class Wrapper(Strategy):
    """A strategy that changes how another one aggregates (differential privacy, secure
    aggregation) and passes everything else through: its client half, its task, its
    state, its sum path."""

    def __init__(self, inner: Strategy):
        super().__init__(aggregator=inner.aggregator, server_optimizer=inner.server_optimizer)
        self.inner = inner

    @property
    def name(self) -> str:
        """The wrapped strategy's name."""
        return self.inner.name

    @property
    def accepts_partial_work(self) -> bool:
        return self.inner.accepts_partial_work

    def init(self, params: Params) -> ServerState:
        return self.inner.init(params)

    def client_task(self, state: ServerState) -> ClientTask:
        return self.inner.client_task(state)

    def client_deltas(
        self, state: ServerState, updates: Iterable[ClientUpdate]
    ) -> Iterator[tuple[Params, float]]:
        return self.inner.client_deltas(state, updates)

    def reported_extras(self, state: ServerState) -> dict[str, Params]:
        return self.inner.reported_extras(state)

    def check_sum_path(self) -> None:
        self.inner.check_sum_path()

    def grad_correction(self, params: Params, task: ClientTask) -> Params | None:
        return self.inner.grad_correction(params, task)

    def step_correction(self, params: Params, task: ClientTask) -> Params | None:
        return self.inner.step_correction(params, task)

    def finish_client(
        self, task: ClientTask, update: ClientUpdate, local: LocalTraining
    ) -> ClientUpdate:
        return self.inner.finish_client(task, update, local)
