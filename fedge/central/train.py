"""Training jobs: minibatch SGD on pooled data, in one process or data-parallel over
``torch.distributed`` ("large batch" training, Goyal et al. 2017, arXiv:1706.02677).

The semantics are those of one process; more workers only change how a step is computed:

* Epoch ``e`` visits the training set in a permutation drawn from ``(seed, e)`` alone, cut
  into consecutive global batches of ``batch_size`` (the last one smaller).
* Rank ``r`` of ``W`` takes every ``W``-th example of each global batch, starting at the
  ``r``-th (``DistributedSampler`` semantics), and back-propagates the *sum* of its
  examples' cross-entropy divided by the global batch's size. One all-reduce (a sum) of
  the flattened gradients then gives every rank the gradient of the batch's mean loss,
  exactly as one process computes it, even when the shards differ in size. (PyTorch's
  ``DistributedDataParallel`` averages the ranks' gradients instead, which weights
  unequal shards wrongly; for these small models its overlap of communication with the
  backward pass would not pay.)
* Every rank then runs the same PyTorch SGD step (``buf = μ·buf + g + λw``,
  ``w ← w − η·buf``) from the same weights, so the replicas stay equal.
* The learning rate of step ``t`` is Goyal et al.'s: the peak ``lr · batch_size /
  reference_batch``, reached by a linear ramp from ``lr`` over ``warmup_epochs`` epochs.
  PyTorch's SGD applies ``η`` outside the momentum buffer, so changing ``η`` needs no
  momentum correction.

The job's task (:mod:`fedge.tasks`) owns the loss and the metrics: for classification
the per-example loss is cross-entropy and the metric accuracy; for detection the loss is
CenterNet's (its ``reduction="sum"`` over the rank's images, divided by the global batch
as above) and the metrics COCO mAP (``test_map``, ``test_map50``). The best epoch is the
one with the best headline metric (accuracy, or mAP@.5).

After every epoch the ranks evaluate disjoint parts of the test set and sum the results
(detection: rank 0 evaluates the whole test set, as mAP is not a sum over examples, and
sends the metrics to the others); rank 0 writes ``metrics.jsonl`` and a checkpoint
(weights, optimizer, epoch, RNG state, history). As an epoch's batches depend only on
``(seed, epoch)``, a job resumed from the checkpoint of epoch ``k`` — with any number of
workers — repeats the steps an uninterrupted job takes from there, and ends with the same
weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedge.central.ddp import Dist
from fedge.central.job_folder import JobFolder
from fedge.central.train_config import TrainJobConfig, TrainSection
from fedge.errors import TrainingError
from fedge.fl.local import evaluate, get_params, set_params
from fedge.models.spec import ModelSpec, build_model, count_parameters, fast_layout
from fedge.tasks import Classification, Task
from fedge.traffic import fingerprint_test_set, tensors_nbytes, traffic_summary

__all__ = [
    "TrainJob",
    "TrainObserver",
    "TrainResult",
    "epoch_order",
    "learning_rate",
    "train_worker",
]


class TrainObserver(Protocol):
    """Progress callbacks, called on rank 0 only."""

    def epoch_started(self, epoch: int, steps: int) -> None: ...

    def step_finished(self, examples: int) -> None: ...

    def epoch_finished(self, metrics: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs: the config, the model spec and the data as tensors.

    ``config`` is the resolved job config (a dataset version pinned to its number);
    ``data_version`` is ``name@n`` for data from the store, ``None`` for a ``[data]``
    section. ``task`` defaults to classification into the spec's outputs.
    """

    config: TrainJobConfig
    spec: ModelSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    data_name: str
    data_version: str | None = None
    task: Task | None = None

    @property
    def the_task(self) -> Task:
        """``task``, or classification into the spec's outputs when it is not set."""
        if self.task is not None:
            return self.task
        return Classification(int(self.spec.output_shapes()[-1][0]))

    def config_dict(self) -> dict[str, Any]:
        """The resolved config as plain TOML/JSON data (unset options left out)."""
        return self.config.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class TrainResult:
    """A finished job: its folder, summary, final weights and spec."""

    out: Path
    summary: dict[str, Any]
    params: dict[str, torch.Tensor]
    spec: ModelSpec


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training examples."""
    state = np.random.SeedSequence([seed, epoch, 0x7EA1]).generate_state(2)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=generator)


def learning_rate(step: int, steps_per_epoch: int, train: TrainSection) -> float:
    """Learning rate of global step ``step`` (0-based): linear warm-up from ``train.lr``
    to the scaled peak over ``warmup_epochs`` epochs, then the peak."""
    warmup_steps = train.warmup_epochs * steps_per_epoch
    if step >= warmup_steps:
        return train.peak_lr
    return train.lr + (train.peak_lr - train.lr) * step / warmup_steps


def _sync_gradients(params: Sequence[torch.Tensor], loss: torch.Tensor, dist: Dist) -> float:
    """Sum gradients and the loss over ranks (one all-reduce); returns the summed loss."""
    if dist.world_size == 1:
        return float(loss)
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype)])
    dist.all_sum(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return float(flat[-1])


def _evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dist: Dist, batch: int
) -> tuple[float, float]:
    """Test loss and accuracy over all ranks' parts of the test set."""
    n = int(y.shape[0])
    totals = torch.zeros(3, dtype=torch.float64)
    if n:
        loss, accuracy = evaluate(model, x, y, batch_size=batch)
        totals += torch.tensor([loss * n, accuracy * n, n], dtype=torch.float64)
    dist.all_sum(totals)
    if totals[2] == 0:
        return float("nan"), float("nan")
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def _evaluate_task(
    job: TrainJob, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dist: Dist
) -> dict[str, float]:
    """The test metrics of an epoch, ``test_``-prefixed. Classification sums the ranks'
    parts (``x``, ``y``); other tasks evaluate the whole test set on rank 0, whose
    metrics every rank receives."""
    task = job.the_task
    batch = job.config.train.eval_batch_size
    if task.kind == "classification":
        loss, accuracy = _evaluate(model, x, y, dist, batch)
        return {"test_loss": loss, "test_accuracy": accuracy}
    metrics = None
    if dist.is_main:
        found = task.evaluate(model, job.x_test, job.y_test, batch_size=batch)
        metrics = {f"test_{k}": v for k, v in found.items()}
    return dist.broadcast(metrics)


def _summary(
    job: TrainJob, history: list[dict[str, Any]], dist: Dist, resumed: int | None
) -> dict[str, Any]:
    t = job.config.train
    task = job.the_task
    key = f"test_{task.headline_metric}"
    best = max(history, key=lambda m: m[key] if math.isfinite(m[key]) else -math.inf)
    extra = {}
    if task.kind != "classification":
        extra = {
            "task": task.to_dict(),
            "final_test_map": history[-1]["test_map"],
            "best_test_map": max(m["test_map"] for m in history),
        }
    seconds = sum(m["seconds"] for m in history)
    n = int(job.y_train.shape[0])
    return {
        "name": job.config.name,
        "data_version": job.data_version,
        "dataset": job.data_name,
        "num_train": n,
        "num_test": int(job.y_test.shape[0]),
        "test_set_sha256": fingerprint_test_set(job.x_test, job.y_test),
        "model": job.spec.name,
        "num_parameters": count_parameters(build_model(job.spec)),
        "workers": dist.world_size,
        "epochs": len(history),
        "batch_size": t.batch_size,
        "peak_lr": t.peak_lr,
        f"final_{key}": history[-1][key],
        "final_test_loss": history[-1]["test_loss"],
        "final_train_loss": history[-1]["train_loss"],
        f"best_{key}": best[key],
        "best_epoch": best["epoch"],
        **extra,
        "seconds": seconds,
        "seconds_per_epoch": seconds / len(history),
        "samples_per_second": n * len(history) / max(seconds, 1e-9),
        "resumed_at_epoch": resumed,
        **traffic_summary(
            history, num_train=n, participants=max(m["participants"] for m in history)
        ),
    }


def _epoch_traffic(job: TrainJob, dist: Dist, epoch: int, allreduced: int) -> dict[str, int]:
    """An epoch's byte counters (:mod:`fedge.traffic`): ``allreduced`` bytes sent (and as
    many received) by all ranks together, and the training data, which reached the cloud
    from its owners' devices once, before the first epoch."""
    n = int(job.y_train.shape[0])
    data = tensors_nbytes([job.x_train, job.y_train]) if epoch == 0 else 0
    return {
        "examples": n,
        "participants": dist.world_size,
        "bytes_down": allreduced,
        "bytes_up": allreduced,
        "bytes_data": data,
        "samples_uploaded": n if epoch == 0 else 0,
        "bytes_sent": allreduced + data,
    }


def _out_of_time(history: Sequence[Mapping[str, Any]], t: TrainSection, dist: Dist) -> bool:
    """Whether the finished epochs used up ``max_seconds`` (rank 0 decides for all)."""
    if t.max_seconds is None:
        return False
    return bool(dist.broadcast(sum(m["seconds"] for m in history) >= t.max_seconds))


def train_worker(
    dist: Dist,
    job: TrainJob,
    folder: JobFolder,
    start: Mapping[str, Any] | None = None,
    observers: Sequence[TrainObserver] = (),
) -> None:
    """Train as rank ``dist.rank``; rank 0 writes metrics, checkpoints and the results
    into ``folder`` (already opened) and calls ``observers``. ``start`` is a checkpoint
    to continue from."""
    t = job.config.train
    task = job.the_task
    torch.set_num_threads(t.threads)
    model = build_model(job.spec, seed=t.seed)
    set_params(model, task.init_params(job.spec, get_params(model)))
    model = fast_layout(model)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.SGD(
        params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, foreach=True
    )
    history: list[dict[str, Any]] = []
    first = 0
    if start is not None:
        # Workers on one machine receive the checkpoint's tensors in shared memory, and
        # the optimizer adopts its momentum buffers as they are: without a private copy
        # every rank would update the same buffers.
        start = copy.deepcopy(start)
        model.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        torch.set_rng_state(start["rng"])
        history, first = list(start["history"]), int(start["epoch"])
    n = int(job.y_train.shape[0])
    steps = math.ceil(n / t.batch_size)
    test_part = torch.arange(int(job.y_test.shape[0]))[dist.rank :: dist.world_size]
    x_test, y_test = job.x_test[test_part], job.y_test[test_part]
    for epoch in range(first, t.epochs):
        if _out_of_time(history, t, dist):
            break
        t0 = time.perf_counter()
        sent = dist.traffic.sent
        for obs in observers:
            obs.epoch_started(epoch + 1, steps)
        order = epoch_order(t.seed, epoch, n)
        model.train()
        loss_sum = 0.0
        for j in range(steps):
            lr = learning_rate(epoch * steps + j, steps, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[j * t.batch_size : (j + 1) * t.batch_size]
            mine = batch[dist.rank :: dist.world_size]
            optimizer.zero_grad(set_to_none=False)
            loss = torch.zeros(())
            if len(mine):
                targets = task.collate(job.y_train[mine])
                loss = task.loss(model(job.x_train[mine]), targets, reduction="sum")
                (loss / len(batch)).backward()
            batch_loss = _sync_gradients(params, loss.detach(), dist)
            if not math.isfinite(batch_loss):
                raise TrainingError(
                    f"training diverged in epoch {epoch + 1}, step {j + 1}: loss "
                    f"{batch_loss}; lower train.lr (peak {t.peak_lr:g}) or add warm-up"
                )
            optimizer.step()
            loss_sum += batch_loss
            for obs in observers:
                obs.step_finished(len(batch))
        train_seconds = time.perf_counter() - t0
        evaluation = _evaluate_task(job, model, x_test, y_test, dist)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n,
            **evaluation,
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "lr": lr,
            **_epoch_traffic(job, dist, epoch, dist.traffic.sent - sent),
        }
        history.append(metrics)
        if dist.is_main:
            folder.write_metrics(history)
            folder.save_checkpoint(
                {
                    "format": 1,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": history,
                    "config": job.config_dict(),
                    "data_version": job.data_version,
                }
            )
            for obs in observers:
                obs.epoch_finished(metrics)
    if dist.is_main:
        resumed = int(start["epoch"]) if start is not None else None
        summary = _summary(job, history, dist, resumed)
        folder.finish(summary, history, model.state_dict(), job.spec)
    dist.barrier()
