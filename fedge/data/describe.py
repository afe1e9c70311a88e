"""Summaries of a client partition: counts, label histograms, a table and a plot.

The per-client label histogram is the quantity NIID-Bench (Li et al., "Federated
Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022) reports to show
how skewed a split is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from fedge.errors import DataError

__all__ = ["PartitionStats", "describe_partition", "plot_partition", "stats_table"]

_PLOT_MAX_CLIENTS = 100
_TABLE_CLASS_COLUMNS = 10
_SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True, eq=False)
class PartitionStats:
    """How many rows, and of which labels, each client holds.

    Attributes
    ----------
    counts:
        int64, shape ``(num_clients,)``: rows per client.
    label_hist:
        int64, shape ``(num_clients, num_classes)``: rows of each label per client.

    Both arrays are stored read-only.
    """

    counts: np.ndarray
    label_hist: np.ndarray

    def __post_init__(self) -> None:
        counts = np.array(self.counts, dtype=np.int64)
        hist = np.array(self.label_hist, dtype=np.int64)
        if counts.ndim != 1 or hist.ndim != 2 or hist.shape[0] != counts.shape[0]:
            raise DataError(
                f"counts must be (clients,) and label_hist (clients, classes), "
                f"got {counts.shape} and {hist.shape}"
            )
        if not np.array_equal(hist.sum(axis=1), counts):
            raise DataError("label_hist rows do not sum to counts")
        counts.setflags(write=False)
        hist.setflags(write=False)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "label_hist", hist)

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of label classes."""
        return int(self.label_hist.shape[1])

    @property
    def total(self) -> int:
        """Rows held by all clients together."""
        return int(self.counts.sum())

    @property
    def min_count(self) -> int:
        """Fewest rows on one client."""
        return int(self.counts.min()) if self.num_clients else 0

    @property
    def median_count(self) -> float:
        """Median rows per client."""
        return float(np.median(self.counts)) if self.num_clients else 0.0

    @property
    def max_count(self) -> int:
        """Most rows on one client."""
        return int(self.counts.max()) if self.num_clients else 0

    @property
    def labels_per_client(self) -> np.ndarray:
        """Number of distinct labels each client holds, shape ``(num_clients,)``."""
        return (self.label_hist > 0).sum(axis=1)

    @property
    def mean_labels_per_client(self) -> float:
        """Mean number of distinct labels per client."""
        return float(self.labels_per_client.mean()) if self.num_clients else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the full counts and histogram as nested lists."""
        return {
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "total": self.total,
            "min_count": self.min_count,
            "median_count": self.median_count,
            "max_count": self.max_count,
            "mean_labels_per_client": self.mean_labels_per_client,
            "counts": self.counts.tolist(),
            "label_hist": self.label_hist.tolist(),
        }

    def summary(self) -> str:
        """One line: clients, rows, min/median/max per client, labels per client."""
        return (
            f"{self.num_clients} clients, {self.total} rows; per client "
            f"min {self.min_count} / median {self.median_count:g} / max {self.max_count}; "
            f"{self.mean_labels_per_client:.2f} labels per client on average"
        )


def describe_partition(
    partition: Sequence[np.ndarray], labels: np.ndarray, num_classes: int
) -> PartitionStats:
    """Count each client's rows and labels.

    Parameters
    ----------
    partition:
        Row indices of each client into ``labels``.
    labels:
        1-D integer labels ``0 .. num_classes-1``.
    num_classes:
        Number of classes (columns of the histogram).

    Returns
    -------
    PartitionStats
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}")
    parts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in partition]
    counts = np.array([p.size for p in parts], dtype=np.int64)
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= y.size):
        raise DataError(f"partition indexes rows outside 0..{y.size - 1}")
    client = np.repeat(np.arange(len(parts)), counts)
    hist = np.bincount(client * num_classes + y[flat], minlength=len(parts) * num_classes)
    return PartitionStats(counts=counts, label_hist=hist.reshape(len(parts), num_classes))


def _sparkline(row: np.ndarray) -> str:
    """One character per class, height proportional to its count (blank if zero)."""
    top = row.max()
    if top == 0:
        return " " * row.size
    levels = np.ceil(row / top * len(_SPARK)).astype(int) - 1
    return "".join(_SPARK[lv] if n else " " for lv, n in zip(levels, row, strict=True))


def stats_table(
    stats: PartitionStats,
    *,
    max_rows: int = 20,
    client_ids: Sequence[str] | None = None,
) -> Table:
    """A rich table of per-client counts and label histograms.

    Parameters
    ----------
    stats:
        Result of :func:`describe_partition`.
    max_rows:
        Clients shown; the rest are summarised in one "… N more clients" row.
        Default 20.
    client_ids:
        Names to show instead of client numbers, one per client.

    Returns
    -------
    rich.table.Table
        With one column per label for up to 10 classes, else a histogram sparkline;
        the caption is :meth:`PartitionStats.summary`.
    """
    if client_ids is not None and len(client_ids) != stats.num_clients:
        raise DataError(f"got {len(client_ids)} client ids for {stats.num_clients} clients")
    per_class = stats.num_classes <= _TABLE_CLASS_COLUMNS
    table = Table(title="Partition", caption=stats.summary())
    table.add_column("client")
    table.add_column("rows", justify="right")
    table.add_column("labels", justify="right")
    if per_class:
        for c in range(stats.num_classes):
            table.add_column(str(c), justify="right")
    else:
        table.add_column(f"histogram (labels 0..{stats.num_classes - 1})")
    shown = min(stats.num_clients, max(max_rows, 0))
    n_labels = stats.labels_per_client
    for i in range(shown):
        hist = stats.label_hist[i]
        name = client_ids[i] if client_ids is not None else str(i)
        cells = [str(n) for n in hist] if per_class else [_sparkline(hist)]
        table.add_row(name, str(stats.counts[i]), str(n_labels[i]), *cells)
    if stats.num_clients > shown:
        table.add_row(f"… {stats.num_clients - shown} more clients")
    return table


def plot_partition(stats: PartitionStats, path: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG with one bar per client, stacked by label.

    Only the first 100 clients are drawn; the title says so when there are more.
    The title is also stored in the PNG's ``Title`` text chunk.
    The file is written to a temporary name in the same folder and renamed, so a
    reader never sees a half-written image.

    Parameters
    ----------
    stats:
        Result of :func:`describe_partition`.
    path:
        Output file; parent folders are created.
    title:
        Plot title; default "Label distribution per client".

    Returns
    -------
    Path
        ``path``.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = min(stats.num_clients, _PLOT_MAX_CLIENTS)
    hist = stats.label_hist[:shown]
    heading = title or "Label distribution per client"
    if stats.num_clients > shown:
        heading += f" (first {shown} of {stats.num_clients} clients)"

    fig = Figure(figsize=(max(6.0, 0.12 * shown + 2.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if stats.num_classes <= 10 else "tab20"]
    x = np.arange(shown)
    bottom = np.zeros(shown, dtype=np.int64)
    for c in range(stats.num_classes):
        ax.bar(x, hist[:, c], bottom=bottom, width=0.85, color=cmap(c % cmap.N), label=str(c))
        bottom = bottom + hist[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("rows")
    ax.set_title(heading)
    ax.set_xlim(-0.5, max(shown, 1) - 0.5)
    if stats.num_classes <= 20:
        ax.legend(title="label", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100, metadata={"Title": heading})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
