"""Put trained models into the registry as frozen bundles (ONNX + safetensors + spec).

``publish_model`` is what a training job calls with its final weights; ``publish_run``
takes the output folder of ``fedge simulate`` (``model.safetensors``, ``model.json``,
``summary.json``, ``config.toml``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedge.central.export import export_bundle
from fedge.central.registry import ModelRegistry, ModelVersion
from fedge.central.weights import params_from_bytes
from fedge.errors import ConfigError
from fedge.models.spec import ModelSpec, load_spec

__all__ = ["RunArtifacts", "load_run", "publish_model", "publish_run"]


@dataclass(frozen=True)
class RunArtifacts:
    """What a finished ``fedge simulate`` folder holds about its final model."""

    spec: ModelSpec
    params: dict[str, torch.Tensor]
    summary: dict[str, Any]
    config: dict[str, Any]


def load_run(run_dir: Path) -> RunArtifacts:
    """Read the model, summary and resolved config of a ``fedge simulate`` output folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    needed = ["model.safetensors", "model.json", "summary.json", "config.toml"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{run_dir} is not a finished fedge run: {', '.join(missing)} missing")
    spec = load_spec(run_dir / "model.json")
    params = params_from_bytes((run_dir / "model.safetensors").read_bytes())
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = tomllib.loads((run_dir / "config.toml").read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{run_dir}: unreadable summary.json or config.toml: {exc}") from None
    return RunArtifacts(spec=spec, params=params, summary=summary, config=config)


def publish_model(
    registry: ModelRegistry,
    name: str,
    spec: ModelSpec,
    params: Mapping[str, torch.Tensor],
    *,
    metrics: Mapping[str, Any] | None = None,
    data_version: str | None = None,
    config: Mapping[str, Any] | None = None,
    source: str | None = None,
    task: Mapping[str, Any] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> ModelVersion:
    """Export ``spec`` + ``params`` to a verified bundle and register it as the next version
    of ``name``. Nothing is registered if the export or its check fails (``atol`` and
    ``rtol`` are the check's tolerances, see :func:`~fedge.central.export.verify_onnx`;
    ``task`` is the model's :meth:`fedge.tasks.Task.to_dict`)."""
    files = export_bundle(spec, params, atol=atol, rtol=rtol)
    return registry.register(
        name,
        files,
        metrics=metrics,
        data_version=data_version,
        config=config,
        source=source,
        task=task,
    )


def publish_run(
    registry: ModelRegistry,
    name: str,
    run_dir: Path,
    *,
    data_version: str | None = None,
) -> ModelVersion:
    """Register the final model of a ``fedge simulate`` folder; its summary becomes the
    version's metrics and its resolved config the training config."""
    run = load_run(run_dir)
    return publish_model(
        registry,
        name,
        run.spec,
        run.params,
        metrics=run.summary,
        data_version=data_version,
        config=run.config,
        source=str(Path(run_dir).resolve()),
        task=run.summary.get("task"),
    )
