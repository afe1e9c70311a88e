"""The output folder of a simulation: resolved config, per-round metrics, summary, plot and
final model.

Files are written into ``<out>.partial/`` and the folder is renamed to ``<out>`` only when
the run completes, so a folder named ``<out>`` always holds a finished result.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
import torch
from safetensors.torch import save_file

from fedge.config import ExperimentConfig
from fedge.errors import ConfigError
from fedge.models.spec import ModelSpec

__all__ = ["ResultFolder", "RunDirectory", "peak_memory_mb", "plot_history", "publish_result"]


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def peak_memory_mb() -> float:
    """Peak resident memory of this process plus its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 if platform.system() != "Darwin" else 1 / 2**20
    return (own + children) * scale


def plot_history(history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """A PNG with test accuracy (a detector's mAP@.5) (left) and test/train loss (right)
    per round."""
    key, title = "test_accuracy", "Test accuracy"
    if any(m.get("test_map50") is not None for m in history):
        key, title = "test_map50", "Test mAP@.5"
    rounds = [m["round"] for m in history if m.get(key) is not None]
    acc = [100 * m[key] for m in history if m.get(key) is not None]
    loss = [m["test_loss"] for m in history if m.get("test_loss") is not None]
    # matplotlib is imported here, not with the module: a simulation that plots only at
    # the end should not carry it (about 30 MB) through all its rounds.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    ax_acc.plot(rounds, acc, marker="o", markersize=3)
    ax_acc.set(xlabel="round", ylabel=f"{title.lower()} (%)", title=title)
    ax_loss.plot(rounds, loss, marker="o", markersize=3, label="test")
    ax_loss.plot(
        [m["round"] for m in history], [m["train_loss"] for m in history], label="train (local)"
    )
    ax_loss.set(xlabel="round", ylabel="loss", title="Loss")
    ax_loss.legend()
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def publish_result(
    partial: Path,
    out: Path,
    summary: Mapping[str, Any],
    params: Mapping[str, torch.Tensor],
    spec: ModelSpec,
) -> Path:
    """Write ``summary.json``, ``model.safetensors`` and ``model.json`` into ``partial``,
    then rename it to ``out`` (replacing an older ``out``); returns ``out``."""
    (partial / "summary.json").write_text(json.dumps(dict(summary), indent=2) + "\n")
    weights = {k: v.detach().contiguous() for k, v in params.items()}
    save_file(weights, partial / "model.safetensors")
    (partial / "model.json").write_text(spec.model_dump_json(indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


class ResultFolder(ABC):
    """A result written into ``<out>.partial`` and published as ``<out>`` when complete.

    The simulation (:class:`RunDirectory`) and centralized training
    (:class:`fedge.central.job_folder.JobFolder`) finish their folders the same way; they
    differ only in the plot (:meth:`plot`) and in the files that serve the running job
    alone (:meth:`clean_up`).

    Parameters
    ----------
    out:
        The folder of the finished result.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")

    @abstractmethod
    def plot(self, history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
        """Draw ``history`` into the PNG ``path``."""

    @abstractmethod
    def clean_up(self) -> None:
        """Close or remove what only the running job needs (after the plot, so that a
        failed plot leaves the job as it was)."""

    def finish(
        self,
        summary: Mapping[str, Any],
        history: Sequence[Mapping[str, Any]],
        params: Mapping[str, torch.Tensor],
        spec: ModelSpec,
    ) -> Path:
        """Write the plot, summary and model, clean up the running job's files and move the
        folder into place; returns ``out``."""
        self.plot(history, self.partial / "curves.png", title=str(summary.get("name", "")))
        self.clean_up()
        return publish_result(self.partial, self.out, summary, params, spec)


class RunDirectory(ResultFolder):
    """Writes a run's files into ``<out>.partial`` and publishes them as ``<out>``."""

    def __init__(self, out: Path, *, overwrite: bool = False):
        super().__init__(out)
        if self.out.exists() and any(self.out.iterdir()) and not overwrite:
            raise ConfigError(f"output folder {self.out} already holds files: use --force")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self._metrics = (self.partial / "metrics.jsonl").open("w")

    def write_config(self, config: ExperimentConfig) -> None:
        data = _drop_none(config.model_dump(mode="json"))
        (self.partial / "config.toml").write_text(tomli_w.dumps(data))

    def append_metrics(self, metrics: Mapping[str, Any]) -> None:
        self._metrics.write(json.dumps(metrics) + "\n")
        self._metrics.flush()

    def plot(self, history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
        return plot_history(history, path, title=title)

    def clean_up(self) -> None:
        self._metrics.close()

    def abandon(self) -> Path:
        """Close files after a failure; the ``.partial`` folder stays for inspection."""
        if not self._metrics.closed:
            self._metrics.close()
        return self.partial
