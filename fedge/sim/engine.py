"""Engines run the client half of a round; the sequential engine is the reference.

Every engine takes the same inputs (a strategy, the round's :class:`ClientTask`, the
sampled client indices) and yields one :class:`ClientUpdate` per client, computed with the
local-SGD semantics of :mod:`fedge.fl.local` and each client's own random stream, so that
any engine gives the same global model as :class:`SequentialEngine` for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from fedge.fl.local import LocalTraining, client_generator, train_client
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params
from fedge.models.spec import ModelSpec, build_model, fast_layout

__all__ = ["ClientData", "Engine", "SequentialEngine"]


class Engine(Protocol):
    """What the simulation asks of an engine."""

    name: str

    def train_round(
        self,
        strategy: Strategy,
        task: ClientTask,
        clients: Sequence[int],
        *,
        states: Mapping[int, Mapping[str, Params]] | None = None,
        max_steps: Mapping[int, int] | None = None,
    ) -> Iterator[ClientUpdate]:
        """One update per client in ``clients``, in any order, as each is ready."""
        ...

    def close(self) -> None:
        """Release workers or other resources the engine holds."""
        ...


@dataclass(frozen=True)
class ClientData:
    """All clients' training examples, resident once: ``x``/``y`` hold the pooled rows and
    ``indices[k]`` the rows of client ``k`` (no per-round copies of the data)."""

    x: torch.Tensor
    y: torch.Tensor
    indices: tuple[torch.Tensor, ...]

    @classmethod
    def from_partition(
        cls, x: torch.Tensor, y: torch.Tensor, partition: Sequence[np.ndarray]
    ) -> ClientData:
        idx = tuple(torch.as_tensor(np.asarray(p), dtype=torch.int64) for p in partition)
        return cls(x=x, y=y, indices=idx)

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    def sizes(self) -> np.ndarray:
        return np.array([len(i) for i in self.indices], dtype=np.int64)

    def client(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client ``k``'s examples (gathered rows)."""
        rows = self.indices[k]
        return self.x[rows], self.y[rows]


class SequentialEngine:
    """Trains the sampled clients one after another in this process."""

    name = "sequential"

    def __init__(self, spec: ModelSpec, data: ClientData, local: LocalTraining, *, seed: int):
        self.data = data
        self.local = local
        self.seed = seed
        self._model = fast_layout(build_model(spec))

    def train_round(
        self,
        strategy: Strategy,
        task: ClientTask,
        clients: Sequence[int],
        *,
        states: Mapping[int, Mapping[str, Params]] | None = None,
        max_steps: Mapping[int, int] | None = None,
    ) -> Iterator[ClientUpdate]:
        """Yield each client's update as soon as it is trained.

        ``states`` holds each client's own state from earlier rounds (e.g. SCAFFOLD's
        c_i); ``max_steps`` the step budgets of stragglers.
        """
        for k in map(int, clients):
            x, y = self.data.client(k)
            own = replace(task, client_state=states.get(k)) if states else task
            yield train_client(
                self._model,
                strategy,
                own,
                x,
                y,
                self.local,
                client_generator(self.seed, task.round, k),
                client_index=k,
                max_steps=max_steps.get(k) if max_steps else None,
            )

    def close(self) -> None:
        """Release nothing: this engine holds no outside resource (engines share the API)."""
