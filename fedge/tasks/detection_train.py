"""Training a detector in plain PyTorch, one process: the reference that ``fedge train``
and ``fedge simulate`` will reproduce for the detection task.

Minibatch training over a :class:`~fedge.data.detection.DetectionDataset`:

* Epoch ``e`` visits the training images in a permutation drawn from ``(seed, e)`` alone,
  cut into batches of ``batch_size`` (the last one smaller). With ``flip`` each image of a
  batch is mirrored left-right with probability 1/2 (its boxes with it), drawn from the
  same stream.
* The loss is :meth:`fedge.tasks.Detection.loss` (CenterNet's, a mean over images).
* AdamW (default; Loshchilov & Hutter 2019) or SGD with momentum, with weight decay, a
  linear warm-up over ``warmup_steps`` and a cosine decay to zero (Loshchilov & Hutter
  2017) over the training's progress: the fraction of planned steps done or, with
  ``max_seconds``, of the time budget used, whichever is larger. A run that the time
  budget stops early has still annealed its learning rate, instead of stopping at the peak
  of its schedule; a run that the budget does not bind is deterministic.
* The model starts from ``build_model(spec, seed)`` with the task's
  :meth:`~fedge.tasks.Detection.init_params` (heatmap bias prior).

The held-out set is evaluated (loss, COCO mAP) every ``eval_every`` epochs and at the end;
evaluation time is not counted as training time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fedge.data.detection import DetectionDataset
from fedge.errors import ConfigError, TrainingError
from fedge.fl.local import get_params, set_params
from fedge.models.spec import ModelSpec, build_model
from fedge.tasks.detection import Detection

__all__ = ["DetectorResult", "DetectorTraining", "flip_batch", "train_detector"]


@dataclass(frozen=True)
class DetectorTraining:
    """Hyper-parameters of :func:`train_detector` (see the module docstring)."""

    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    flip: bool = True
    max_seconds: float | None = None
    eval_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise ConfigError("warmup_steps and eval_every must be >= 0")


@dataclass
class DetectorResult:
    """Final weights, per-epoch history and the last evaluation."""

    params: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def flip_batch(
    x: torch.Tensor, y: torch.Tensor, flip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the images where ``flip`` (bool ``(B,)``) is set, left-right, boxes too."""
    if not bool(flip.any()):
        return x, y
    width = x.shape[-1]
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    mirrored = y.clone()
    mirrored[..., 1] = width - y[..., 3]
    mirrored[..., 3] = width - y[..., 1]
    keep = (~flip).view(-1, 1, 1) | (y[..., :1] < 0)
    return x, torch.where(keep, y, mirrored)


def _generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, 0xDE7]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _lr_factor(step: int, total: int, warmup: int, time_used: float = 0.0) -> float:
    """Warm-up, then cosine over the progress: the larger of the post-warm-up steps done
    and ``time_used`` (the fraction of the time budget)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = max((step - warmup) / max(total - warmup, 1), time_used)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_detector(
    spec: ModelSpec,
    task: Detection,
    train: DetectionDataset,
    test: DetectionDataset,
    config: DetectorTraining = DetectorTraining(),
    *,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> DetectorResult:
    """Train ``spec`` for ``task`` on ``train``; evaluate on ``test`` (see the module
    docstring). ``log`` receives each epoch's metrics as they are computed."""
    task.check_spec(spec)
    model = build_model(spec, seed=config.seed)
    set_params(model, task.init_params(spec, get_params(model)))
    params = list(model.parameters())
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    n = len(train)
    steps = math.ceil(n / config.batch_size)
    total = steps * config.epochs
    result = DetectorResult(params={})
    step = 0
    for epoch in range(config.epochs):
        generator = _generator(config.seed, epoch)
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        model.train()
        t0 = time.perf_counter()
        loss_sum = 0.0
        out_of_time = False
        for j in range(steps):
            idx = order[j * config.batch_size : (j + 1) * config.batch_size]
            x, y = train.x[idx], train.y[idx]
            if config.flip:
                x, y = flip_batch(x, y, flips[idx])
            elapsed = result.train_seconds + time.perf_counter() - t0
            used = elapsed / config.max_seconds if config.max_seconds else 0.0
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, total, config.warmup_steps, used)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(x), task.collate(y))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"training diverged in epoch {epoch + 1}, step {j + 1}: loss {value}; "
                    f"lower the learning rate ({config.lr:g})"
                )
            loss.backward()
            optimizer.step()
            loss_sum += value * len(idx)
            step += 1
            elapsed = result.train_seconds + time.perf_counter() - t0
            if config.max_seconds is not None and elapsed >= config.max_seconds:
                out_of_time = True
                break
        result.train_seconds += time.perf_counter() - t0
        last = epoch == config.epochs - 1 or out_of_time
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "steps": step,
            "train_loss": loss_sum / max(min((j + 1) * config.batch_size, n), 1),
            "train_seconds": result.train_seconds,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if last or (config.eval_every and (epoch + 1) % config.eval_every == 0):
            t1 = time.perf_counter()
            evaluation = task.evaluate(model, test.x, test.y)
            metrics.update({f"test_{k}": v for k, v in evaluation.items()})
            metrics["eval_seconds"] = time.perf_counter() - t1
        result.history.append(metrics)
        if log is not None:
            log(metrics)
        if out_of_time:
            break
    result.params = get_params(model)
    return result
