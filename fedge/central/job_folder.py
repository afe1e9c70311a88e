"""The output folder of a training job: config, per-epoch metrics and checkpoints while it
runs; summary, plot and model when it is done.

A job writes into ``<out>.partial/``; when it completes, the checkpoint is removed and the
folder is renamed to ``<out>``, so a folder named ``<out>`` always holds a finished job,
and a ``.partial`` folder one that can be resumed. The checkpoint (``checkpoint.pt``) is
rewritten after every epoch, atomically (a temporary file, flushed, then renamed over
the old one), so an interruption at any moment leaves the previous epoch's checkpoint.

Files of a finished job:

| file | content |
| --- | --- |
| ``config.toml`` | the resolved job config |
| ``metrics.jsonl`` | one JSON object per epoch |
| ``summary.json`` | final and best accuracy, timings, data version, sizes |
| ``curves.png`` | test accuracy, losses and learning rate per epoch |
| ``model.safetensors``, ``model.json`` | the final model and its spec |
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
import torch

from fedge.central.folder_lock import FolderLock
from fedge.errors import ConfigError
from fedge.sim.outputs import ResultFolder

__all__ = ["CHECKPOINT", "JobFolder", "plot_epochs"]

CHECKPOINT = "checkpoint.pt"


def plot_epochs(history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """A PNG with test accuracy (a detector: mAP@.5 and mAP@[.5:.95]), train/test loss
    and learning rate per epoch."""
    # Imported here: only rank 0 plots, once, and workers start faster without it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [m["epoch"] for m in history]
    fig = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_loss, ax_lr = fig.subplots(1, 3)
    if "test_accuracy" in history[0]:
        ax_acc.plot(epochs, [100 * m["test_accuracy"] for m in history], marker="o", markersize=3)
        ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
        loss_name = "cross-entropy"
    else:
        for key, label in (("test_map50", "mAP@.5"), ("test_map", "mAP@[.5:.95]")):
            values = [100 * m[key] for m in history]
            ax_acc.plot(epochs, values, marker="o", markersize=3, label=label)
        ax_acc.set(xlabel="epoch", ylabel="test mAP (%)", title="Test mAP")
        ax_acc.legend()
        loss_name = "detection loss"
    ax_loss.plot(epochs, [m["test_loss"] for m in history], marker="o", markersize=3, label="test")
    ax_loss.plot(epochs, [m["train_loss"] for m in history], label="train")
    ax_loss.set(xlabel="epoch", ylabel=loss_name, title="Loss")
    ax_loss.legend()
    ax_lr.plot(epochs, [m["lr"] for m in history], marker="o", markersize=3)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Learning rate (end of epoch)")
    for ax in (ax_acc, ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class JobFolder(ResultFolder):
    """Where one job's files go: ``out`` when finished, ``out.partial`` while running.

    Parameters
    ----------
    out:
        The folder of the finished job.
    """

    _lock: FolderLock | None = None

    @property
    def checkpoint(self) -> Path:
        return self.partial / CHECKPOINT

    @property
    def lock_file(self) -> Path:
        """``.<out>.lock`` beside ``out``: see :mod:`fedge.central.folder_lock`."""
        return self.out.with_name(f".{self.out.name}.lock")

    def open(self, *, resume: bool = False, force: bool = False) -> None:
        """Lock the folder, and get ``out.partial`` ready: kept as it is to resume, else
        created empty. The lock is held until :meth:`close` (or this process and the
        workers it starts with the folder have all ended).

        Raises :class:`ConfigError` when another job holds the folder, when resuming
        without a checkpoint, or when starting over would replace a finished or
        interrupted job without ``force``.
        """
        self._lock = FolderLock.acquire(self.lock_file, self.out)
        try:
            self._prepare(resume=resume, force=force)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unlock the folder: the job has ended."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _prepare(self, *, resume: bool, force: bool) -> None:
        finished = self.out.exists() and any(self.out.iterdir())
        if resume:
            if not self.checkpoint.is_file():
                done = " (it finished: use --force to train again)" if finished else ""
                raise ConfigError(f"nothing to resume: no {self.checkpoint}{done}")
            return
        if finished and not force:
            raise ConfigError(f"output folder {self.out} already holds files: use --force")
        if self.checkpoint.is_file() and not force:
            raise ConfigError(
                f"{self.partial} holds an interrupted job: --resume continues it, "
                "--force starts over"
            )
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)

    def write_config(self, config: Mapping[str, Any]) -> None:
        _atomic_write(
            self.partial / "config.toml", lambda f: f.write(tomli_w.dumps(config).encode())
        )

    def write_metrics(self, history: Sequence[Mapping[str, Any]]) -> None:
        """(Re)write ``metrics.jsonl`` with every epoch so far: after a resume it holds
        exactly the checkpoint's epochs, never a line twice."""
        text = "".join(json.dumps(dict(m)) + "\n" for m in history)
        _atomic_write(self.partial / "metrics.jsonl", lambda f: f.write(text.encode()))

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` (any ``torch.save``-able mapping) as the checkpoint, atomically."""
        _atomic_write(self.checkpoint, lambda f: torch.save(dict(state), f))

    def load_checkpoint(self) -> dict[str, Any]:
        try:
            return torch.load(self.checkpoint, weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"nothing to resume: no {self.checkpoint}") from None
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            raise ConfigError(f"checkpoint {self.checkpoint} is unreadable: {exc}") from None

    def plot(self, history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
        return plot_epochs(history, path, title=title)

    def clean_up(self) -> None:
        """Drop the checkpoint: a finished job is not resumed."""
        self.checkpoint.unlink(missing_ok=True)
