"""The interface every federated algorithm implements: both halves in one object.

The server half configures a round (:meth:`Strategy.client_task`) and aggregates what
clients report (:meth:`Strategy.aggregate`). The client half is the term a strategy adds to
each local gradient step (:meth:`Strategy.grad_correction`), applied by the shared local
optimizer in :mod:`fedge.fl.local`, so no engine or client can forget it. Methods are pure
functions of their arguments: no I/O, no threads, no state kept between calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState, clone_params

__all__ = ["Strategy"]


class Strategy(ABC):
    """Base class of federated algorithms."""

    name: ClassVar[str]

    def init(self, params: Params) -> ServerState:
        """The server state before round 1, starting from ``params``."""
        return ServerState(params=clone_params(params), round=0)

    def client_task(self, state: ServerState) -> ClientTask:
        """What every client sampled in the next round starts from."""
        return ClientTask(round=state.round + 1, params=state.params)

    def grad_correction(self, params: Params, task: ClientTask) -> Params | None:
        """Client half: a term added to the loss gradient at every local step.

        ``params`` are the client's current weights. ``None`` (the default) adds nothing.
        Must be a pure tensor function so that batched engines can vectorize it.
        """
        return None

    @abstractmethod
    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        """Server half: the next global state from the round's client updates.

        ``updates`` may be a one-pass iterator; implementations should consume it with a
        running sum so that memory does not grow with the number of clients.
        """
