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

Methods are pure functions of their arguments: no I/O, no threads, and nothing stored on
the object between calls. Per-client state travels in :attr:`ClientTask.client_state`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar

from fedge.fl.aggregators import Aggregator, WeightedMean
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState, clone_params

if TYPE_CHECKING:
    from fedge.fl.local import LocalTraining

__all__ = ["Strategy"]


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
        return ServerState(params=params, round=0, extras=self.server_optimizer.init(params))

    def client_task(self, state: ServerState) -> ClientTask:
        """What every client sampled in the next round starts from."""
        return ClientTask(round=state.round + 1, params=state.params)

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
        delta = self.combine(state, updates)
        opt_state = {k: v for k, v in state.extras.items() if k.startswith("opt.")}
        params, opt_state = self.server_optimizer.step(state.params, delta, opt_state)
        kept = {k: v for k, v in state.extras.items() if not k.startswith("opt.")}
        return ServerState(params=params, round=state.round + 1, extras={**kept, **opt_state})

    def reported_extras(self, state: ServerState) -> dict[str, Params]:
        """What a client reports beyond its weights, as reference tensors by group (names,
        shapes and dtypes to check uploads against); nothing by default."""
        return {}

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
