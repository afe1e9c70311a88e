"""The server side of federated rounds, with no transport and no storage.

One round engine drives both the simulation (:mod:`fedge.sim.experiment`) and the
deployment server (:mod:`fedge.federation.server`), so that what is simulated is what is
deployed. A round goes through these steps:

1. **open**: :meth:`RoundCoordinator.open` starts round ``number`` on the current global
   model (``model_version`` = rounds aggregated so far; version 0 is the initial model).
2. **select**: :meth:`Round.assign` hands tasks to devices, up to
   ``ceil(target · over_selection)`` of them (over-selection: some devices vanish).
   The deadline counts from the first task handed out.
3. **collect**: :meth:`Round.admit` decides whether an update may enter the round (right
   round and model version, assigned device, one update per device; a retry with the
   same idempotency key is recognised as such), :meth:`RoundCoordinator.check` validates
   its contents and :meth:`Round.accept` records it.
4. **close**: :meth:`Round.due` says when: on ``target`` accepted updates, or at the
   deadline with at least ``quorum`` of them; at the deadline with fewer, the round is
   abandoned and the model does not change. :meth:`RoundCoordinator.close` aggregates.

Aggregation is a pure function of the global state and the accepted updates
(:meth:`~fedge.fl.strategy.Strategy.aggregate`): the server stores every accepted update
before acknowledging it, so after a crash it rebuilds the same aggregate by passing the
stored updates to :meth:`RoundCoordinator.close` again. Updates stream through it one at a
time (a running sum), so memory does not grow with the cohort.

A round has one *stage*, ``"train"``, today. Secure aggregation adds stages to a round
(advertise keys, share keys, masked input, unmask), each with its own deadline and its own
dropouts; :attr:`Round.stage` names the current one and the server reports it.

Round numbers and model versions differ: an abandoned round uses up a round number but
not a model version. The strategy and each client's random stream see the *training*
round ``model_version + 1`` (:attr:`~fedge.fl.types.ClientTask.round`), which is the same
in a simulation and in a deployment whatever rounds were abandoned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedge.errors import ConfigError, FedgeError, StaleUpdate, UpdateRejected
from fedge.fl.pipeline import check_update
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, ServerState

__all__ = ["Round", "RoundCoordinator", "RoundPolicy", "RoundStatus", "RoundTally"]


@dataclass(frozen=True)
class RoundPolicy:
    """How a round selects devices and when it closes.

    Parameters
    ----------
    target:
        Updates that close a round at once (the cohort size, ``clients_per_round``).
    over_selection:
        Tasks handed out per wanted update, >= 1 (default 1: exactly ``target``).
    quorum:
        Fewest updates a round aggregates at its deadline (default ``target``).
    deadline:
        Seconds from a round's first task to its deadline (default ``None``: no deadline,
        the round waits for ``target`` updates).
    max_samples:
        Largest sample count an update may claim (default ``None``: no bound).
    """

    target: int
    over_selection: float = 1.0
    quorum: int | None = None
    deadline: float | None = None
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.target < 1:
            raise ConfigError(f"a round needs a target of at least 1 update, got {self.target}")
        if not (self.over_selection >= 1 and math.isfinite(self.over_selection)):
            raise ConfigError(f"over-selection must be >= 1, got {self.over_selection}")
        if self.quorum is not None and not 1 <= self.quorum <= self.target:
            raise ConfigError(f"quorum must be in [1, {self.target}], got {self.quorum}")
        if self.deadline is not None and not self.deadline > 0:
            raise ConfigError(f"round deadline must be > 0 seconds, got {self.deadline}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max samples must be >= 1, got {self.max_samples}")

    @property
    def selected(self) -> int:
        """Tasks a round hands out: ``ceil(target · over_selection)``."""
        return math.ceil(self.target * self.over_selection - 1e-9)

    @property
    def min_updates(self) -> int:
        """Updates a round needs to be aggregated at its deadline."""
        return self.target if self.quorum is None else self.quorum


class RoundStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ABANDONED = "abandoned"


@dataclass
class Round:
    """One round's bookkeeping: who got a task, whose update was accepted, when it ends.

    Times are seconds on any clock the caller uses consistently (the server uses wall
    time, so that deadlines survive a restart).
    """

    number: int
    model_version: int
    policy: RoundPolicy
    stage: str = "train"
    status: RoundStatus = RoundStatus.OPEN
    started_at: float | None = None
    assigned: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, str] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        """When the round stops collecting (``None``: no task handed out yet, or no
        deadline)."""
        if self.started_at is None or self.policy.deadline is None:
            return None
        return self.started_at + self.policy.deadline

    def seconds_left(self, now: float) -> float | None:
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - now)

    def has_slot(self) -> bool:
        return self.status is RoundStatus.OPEN and len(self.assigned) < self.policy.selected

    def assign(self, device: str, now: float) -> bool:
        """Hand ``device`` a task if the round has a free slot; ``True`` if it holds one
        (also when it was given one before)."""
        if device in self.assigned:
            return True
        if not self.has_slot():
            return False
        if self.started_at is None:
            self.started_at = now
        self.assigned[device] = now
        return True

    def admit(self, device: str, round: int, model_version: int, key: str) -> bool:
        """Whether an update from ``device`` may enter this round: ``True`` for a new one,
        ``False`` for a retry of the update already accepted under the same ``key``.

        Raises :class:`StaleUpdate` for another round or model version, a round no longer
        open, a device without a task in it, or a second update under another key.
        """
        if round != self.number:
            raise StaleUpdate(f"round {round} is not the open round ({self.number})")
        if model_version != self.model_version:
            raise StaleUpdate(
                f"the update was trained from model version {model_version}; "
                f"round {self.number} trains version {self.model_version}"
            )
        if device in self.accepted:
            if self.accepted[device] == key:
                return False
            raise StaleUpdate(f"device {device} already reported in round {self.number}")
        if self.status is not RoundStatus.OPEN:
            raise StaleUpdate(f"round {self.number} is {self.status.value}")
        if device not in self.assigned:
            raise StaleUpdate(f"device {device} has no task in round {self.number}")
        return True

    def accept(self, device: str, key: str) -> None:
        """Record ``device``'s update (after :meth:`admit` and the content checks)."""
        self.accepted[device] = key

    def due(self, now: float) -> RoundStatus | None:
        """What the round should do at ``now``: close, be abandoned, or nothing yet."""
        if self.status is not RoundStatus.OPEN:
            return None
        if len(self.accepted) >= self.policy.target:
            return RoundStatus.CLOSED
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            if len(self.accepted) >= self.policy.min_updates:
                return RoundStatus.CLOSED
            return RoundStatus.ABANDONED
        return None


@dataclass
class RoundTally:
    """Totals over a round's updates as they stream into the aggregate."""

    clients: int = 0
    rejected: int = 0
    samples: int = 0
    examples: int = 0
    loss: float = 0.0
    devices: list[str] = field(default_factory=list)

    def add(self, update: ClientUpdate) -> None:
        self.clients += 1
        self.samples += update.num_samples
        self.examples += update.metrics.get("examples", 0)
        self.loss += update.metrics.get("train_loss", 0.0) * update.num_samples
        self.devices.append(str(update.client))

    @property
    def train_loss(self) -> float:
        """Sample-weighted mean training loss of the aggregated updates."""
        return self.loss / max(self.samples, 1)


class RoundCoordinator:
    """The global state and the open round of one federation.

    Parameters
    ----------
    strategy:
        The algorithm (its server half runs here; its client half on the devices).
    state:
        The global state to start from (``strategy.init(...)``, or one loaded after a
        restart).
    policy:
        Selection and closing rules of every round.
    rounds:
        Model versions to train (the experiment ends at version ``rounds``).
    """

    def __init__(self, strategy: Strategy, state: ServerState, policy: RoundPolicy, *, rounds: int):
        self.strategy = strategy
        self.state = state
        self.policy = policy
        self.rounds = rounds
        self.round: Round | None = None
        self._reference = (state.params, strategy.reported_extras(state))

    @property
    def finished(self) -> bool:
        return self.state.rounds_completed >= self.rounds

    def open(self, number: int) -> Round:
        """Open round ``number`` on the current model."""
        if self.finished:
            raise FedgeError(f"all {self.rounds} rounds are done")
        self.round = Round(
            number=number, model_version=self.state.rounds_completed, policy=self.policy
        )
        return self.round

    def task(self) -> ClientTask:
        """What every device of the open round starts from."""
        return self.strategy.client_task(self.state)

    def check(self, update: ClientUpdate) -> ClientUpdate:
        """Validate an update's contents against the current model and the strategy:
        names, shapes, dtypes and finiteness of weights and extras, the sample count
        bound, finite metrics (raises :class:`UpdateRejected`)."""
        params, extras = self._reference
        return check_update(update, params, extras=extras, max_samples=self.policy.max_samples)

    def collect(self, updates: Iterable[ClientUpdate], tally: RoundTally) -> Iterator[ClientUpdate]:
        """Pass on the valid updates of ``updates``, counting them (and the rejected) in
        ``tally``."""
        for update in updates:
            try:
                self.check(update)
            except UpdateRejected:
                tally.rejected += 1
                continue
            tally.add(update)
            yield update

    def aggregate(self, updates: Iterable[ClientUpdate], tally: RoundTally) -> ServerState:
        """The next global state from the round's updates, without changing this object."""
        try:
            return self.strategy.aggregate(self.state, self.collect(updates, tally))
        except FedgeError:
            if tally.rejected:
                raise FedgeError(
                    f"round {self.state.rounds_completed + 1}: all {tally.rejected} client "
                    "updates held NaN or Inf (training diverged?): lower client.lr"
                ) from None
            raise

    def advance(self, state: ServerState) -> None:
        """Make ``state`` (from :meth:`aggregate`) the global state and close the round."""
        if state.rounds_completed != self.state.rounds_completed + 1:
            raise FedgeError(
                f"a state after {state.rounds_completed} rounds cannot follow model version "
                f"{self.state.rounds_completed}"
            )
        self.state = state
        self._reference = (state.params, self.strategy.reported_extras(state))
        if self.round is not None:
            self.round.status = RoundStatus.CLOSED

    def close(
        self, updates: Iterable[ClientUpdate], tally: RoundTally | None = None
    ) -> ServerState:
        """Aggregate ``updates`` into the next global state and close the open round."""
        state = self.aggregate(updates, tally if tally is not None else RoundTally())
        self.advance(state)
        return state

    def abandon(self) -> None:
        """End the open round without changing the model."""
        if self.round is not None:
            self.round.status = RoundStatus.ABANDONED

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of the open round."""
        r = self.round
        if r is None:
            return {}
        return {
            "number": r.number,
            "model_version": r.model_version,
            "stage": r.stage,
            "status": r.status.value,
            "target": self.policy.target,
            "selected": self.policy.selected,
            "quorum": self.policy.min_updates,
            "assigned": len(r.assigned),
            "accepted": len(r.accepted),
        }
