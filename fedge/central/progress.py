"""A rich progress bar for training jobs: epochs, and the steps of the current epoch."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["RichProgress"]


class RichProgress:
    """Two bars, ``epochs`` and ``steps``, with examples per second and the last test
    accuracy; a :class:`~fedge.central.train.TrainObserver` used as a context manager.

    Parameters
    ----------
    epochs:
        Epochs of the whole job.
    done:
        Epochs already finished (when resuming).
    console:
        Where to draw (default: a new console on stdout).
    """

    def __init__(self, epochs: int, *, done: int = 0, console: Console | None = None):
        self.progress = Progress(
            TextColumn("{task.description:>6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console or Console(),
        )
        self.epochs = self.progress.add_task("epochs", total=epochs, completed=done, status="")
        self.steps = self.progress.add_task("steps", total=1, status="")
        self.examples = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def epoch_started(self, epoch: int, steps: int) -> None:
        self.progress.reset(self.steps, total=steps, status="")
        self.examples = 0
        self.t0 = time.perf_counter()

    def step_finished(self, examples: int) -> None:
        self.examples += examples
        rate = self.examples / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.steps, advance=1, status=f"{rate:,.0f} examples/s")

    def epoch_finished(self, metrics: Mapping[str, Any]) -> None:
        if "test_accuracy" in metrics:
            score = f"acc {100 * metrics['test_accuracy']:.2f}%"
        else:
            score = f"mAP@.5 {100 * metrics['test_map50']:.2f}%"
        status = f"{score}  lr {metrics['lr']:.4g}"
        self.progress.update(self.epochs, advance=1, status=status)
