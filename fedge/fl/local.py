"""Local training and evaluation: what every client runs, in every engine.

Local SGD is defined once, here, so that the simulation engines, the deployment clients and
the tests agree on it exactly:

* For each of ``epochs`` epochs, draw a permutation of the client's ``n`` examples from the
  client's own random stream (:func:`client_generator`) and cut it into consecutive batches
  of ``batch_size`` (the last one smaller unless ``drop_last``). ``batch_size=None`` means
  full batch.
* At each step the gradient is that of the mean loss over the batch (softmax
  cross-entropy, or the task's loss: :attr:`LocalTraining.task`), plus
  ``weight_decay · w``, plus the strategy's :meth:`~fedge.fl.strategy.Strategy.grad_correction`.
* The update is PyTorch's SGD: ``buf = momentum·buf + g`` (``buf = g`` at the first step),
  ``w ← w − lr·buf``; the momentum buffer starts at zero in every round. Then the
  strategy's :meth:`~fedge.fl.strategy.Strategy.step_correction` ``d`` moves
  ``w ← w − lr·d``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedge.errors import ConfigError
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params

if TYPE_CHECKING:
    from fedge.tasks import Task

__all__ = [
    "LocalTraining",
    "batch_loss",
    "client_generator",
    "evaluate",
    "get_params",
    "set_params",
    "train_client",
]


@dataclass(frozen=True)
class LocalTraining:
    """Hyper-parameters of a client's local SGD (see the module docstring).

    ``task`` is what the model learns (:mod:`fedge.tasks`): its loss is what local SGD
    minimises. ``None`` means classification, softmax cross-entropy on int64 labels.
    """

    epochs: int = 1
    batch_size: int | None = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    drop_last: bool = False
    task: Task | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"local epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")

    def steps_per_epoch(self, n: int) -> int:
        """Local steps one epoch over ``n`` examples takes."""
        b = n if self.batch_size is None else min(self.batch_size, n)
        return n // b if self.drop_last else math.ceil(n / b)


def client_generator(seed: int, round: int, client_index: int) -> torch.Generator:
    """The random stream of one client in one round.

    Derived from ``(seed, round, client_index)`` alone, so a client's batches do not depend
    on which other clients are sampled, in what order, or on which engine.
    """
    state = np.random.SeedSequence([seed, round, client_index, 0x10CA1]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def get_params(model: torch.nn.Module) -> Params:
    """A detached, contiguous copy of ``model``'s parameters."""
    return {
        name: p.detach().clone(memory_format=torch.contiguous_format)
        for name, p in model.named_parameters()
    }


@torch.no_grad()
def set_params(model: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy ``params`` into ``model`` in place (names and shapes must match)."""
    for name, p in model.named_parameters():
        p.copy_(params[name])


def train_client(
    model: torch.nn.Module,
    strategy: Strategy,
    task: ClientTask,
    x: torch.Tensor,
    y: torch.Tensor,
    config: LocalTraining,
    generator: torch.Generator,
    *,
    client_index: int = 0,
    max_steps: int | None = None,
) -> ClientUpdate:
    """Run local SGD from ``task.params`` on ``(x, y)`` and report the trained weights.

    ``model`` is a work area: its parameters are overwritten. ``x`` and ``y`` are the
    client's own examples. ``max_steps`` stops a client that does only part of its work
    (a straggler) after that many local steps. ``client_index`` is the client's index in
    the simulation, reported as :attr:`~fedge.fl.types.ClientUpdate.client`. The report is
    completed by the strategy's :meth:`~fedge.fl.strategy.Strategy.finish_client`.
    """
    n = int(y.shape[0])
    set_params(model, task.params)
    model.train()
    named = dict(model.named_parameters())
    optimizer = torch.optim.SGD(
        named.values(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        foreach=True,
    )
    b = n if config.batch_size is None else min(config.batch_size, n)
    per_epoch = config.steps_per_epoch(n)
    steps = config.epochs * per_epoch
    if max_steps is not None:
        steps = min(steps, max_steps)
    loss_sum = torch.zeros((), dtype=torch.float64)
    seen = 0
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(n, generator=generator)
        start = (step % per_epoch) * b
        idx = order[start : start + b]
        optimizer.zero_grad(set_to_none=False)
        loss = batch_loss(config.task, model(x[idx]), y[idx])
        loss.backward()
        correction = strategy.grad_correction(named, task)
        if correction is not None:
            with torch.no_grad():
                for name, p in named.items():
                    p.grad.add_(correction[name])
        optimizer.step()
        drift = strategy.step_correction(named, task)
        if drift is not None:
            with torch.no_grad():
                for name, p in named.items():
                    p.sub_(drift[name], alpha=config.lr)
        loss_sum += loss.detach() * idx.shape[0]
        seen += idx.shape[0]
    update = ClientUpdate(
        client=client_index,
        params=get_params(model),
        num_samples=n,
        num_steps=steps,
        metrics={"train_loss": float(loss_sum) / max(seen, 1), "examples": seen},
    )
    return strategy.finish_client(task, update, config)


def batch_loss(task: Task | None, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean loss of a batch: softmax cross-entropy without a task, else the task's
    loss on its collated targets."""
    if task is None:
        return F.cross_entropy(outputs, targets)
    return task.loss(outputs, task.collate(targets))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    params: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 512,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (or of ``params`` loaded into it)."""
    if params is not None:
        set_params(model, params)
    model.eval()
    n = int(y.shape[0])
    if n == 0:
        return float("nan"), float("nan")
    loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum")
        correct += int((logits.argmax(dim=1) == target).sum())
    return float(loss) / n, correct / n
