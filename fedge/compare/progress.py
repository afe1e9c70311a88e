"""A rich progress display for comparisons: the arm that runs, its progress, and the whole
comparison's progress with the time left."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["RichCompareProgress"]


class RichCompareProgress:
    """Two bars, the whole comparison (in arms, with the time left) and the arm that runs
    (its epochs or rounds and last test accuracy); a
    :class:`~fedge.compare.runner.CompareObserver` used as a context manager.

    The time left is extrapolated from the speed of the arms run in this session (arms
    that finished before are not counted), over the whole session.
    """

    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            TextColumn("{task.description:>22}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console or Console(),
            speed_estimate_period=24 * 3600,
        )
        self.overall = self.progress.add_task("comparison", total=1, status="")
        self.arm = self.progress.add_task("", total=1, status="", visible=False)
        self.done = 0.0
        self.finished: set[str] = set()

    def __enter__(self) -> RichCompareProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def comparison_started(self, arms: list[str], finished: list[str]) -> None:
        self.finished = set(finished)
        self.done = float(len(finished))
        self.progress.reset(self.overall, total=len(arms), completed=self.done, status="")

    def arm_started(self, name: str, index: int, total: int) -> None:
        self.progress.update(self.overall, status=f"arm {index + 1}/{total}: {escape(name)}")
        self.progress.reset(self.arm, total=1, description=escape(name), status="", visible=True)

    def arm_progress(self, fraction: float, status: str) -> None:
        self.progress.update(self.arm, completed=fraction, status=status)
        self.progress.update(self.overall, completed=self.done + fraction)

    def arm_finished(self, name: str, summary: dict[str, Any], skipped: bool) -> None:
        if name not in self.finished:
            self.done += 1
        self.progress.update(self.arm, completed=1)
        self.progress.update(self.overall, completed=self.done)
        how = "finished before" if skipped else f"{summary['seconds']:.1f} s"
        self.progress.console.print(
            f"{escape(name)}: final test accuracy {100 * summary['final_test_accuracy']:.2f}%, "
            f"best {100 * summary['best_test_accuracy']:.2f}%, "
            f"{summary['epochs_of_compute']:.2f} epochs of compute ({how})",
            soft_wrap=True,
            highlight=False,
        )

    def arm_failed(self, name: str, error: str) -> None:
        if name not in self.finished:
            self.done += 1
        self.progress.update(self.overall, completed=self.done)
        self.progress.console.print(
            f"[bold red]{escape(name)} failed:[/] {escape(error)}", soft_wrap=True, highlight=False
        )
