"""Training-job files: a typed schema for ``fedge train``, TOML loading and overrides.

A job names its data (a dataset version in the store, or a ``[data]`` section as in
``fedge simulate``), a model and the optimizer::

    name = "fmnist-lenet"
    store = "./fedge-store"     # optional: else --store, $FEDGE_STORE, ./fedge-store

    [dataset]                   # or a [data] section, e.g. name = "fashion_mnist"
    name = "fmnist"
    version = "latest"          # or a number; the job records the one it used

    [model]                     # as in fedge simulate
    preset = "lenet"

    [train]
    epochs = 10
    batch_size = 256            # global: split among the workers
    lr = 0.1                    # learning rate at reference_batch
    reference_batch = 256       # lr is scaled by batch_size / reference_batch
    momentum = 0.9
    weight_decay = 5e-4
    warmup_epochs = 1
    seed = 0

    [task]                      # optional: what the data says, checked, and served defaults
    kind = "detection"          # detection data (boxes) trains a detector, e.g. the
    score_threshold = 0.3       # centernet preset; these two are /predict's defaults
    max_detections = 100

Unknown keys and values of the wrong type are a :class:`~fedge.errors.ConfigError` that
names the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from fedge.config import (
    DataConfig,
    ModelConfig,
    TaskSection,
    apply_overrides,
    describe_validation_error,
)
from fedge.errors import ConfigError

__all__ = [
    "DatasetSection",
    "TaskSection",
    "TrainJobConfig",
    "TrainSection",
    "load_train_config",
    "parse_train_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSection(_Section):
    """A dataset version in the store (see :mod:`fedge.central.datasets`).

    ``test_fraction`` of the training examples (seeded, at least one) are held out for
    evaluation when the version has no test split of its own; default 0.1.
    """

    name: str
    version: PositiveInt | Literal["latest"] = "latest"
    test_fraction: float = Field(0.1, gt=0, lt=1)


class TrainSection(_Section):
    """Minibatch SGD over the pooled data, in one process or data-parallel.

    ``batch_size`` is the global batch (all workers together). The learning rate follows
    Goyal et al. (2017), "Accurate, Large Minibatch SGD": the peak rate is
    ``lr * batch_size / reference_batch`` (``reference_batch`` defaults to ``batch_size``:
    no scaling), reached by a linear ramp from ``lr`` over the first ``warmup_epochs``
    epochs (counted in steps; default 0, no warm-up), and then held.

    ``max_seconds`` (optional) is a wall-clock limit: no epoch starts once the finished
    epochs have taken that many seconds, so the job ends after at most ``epochs``.
    """

    epochs: PositiveInt = 1
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 0.01
    reference_batch: PositiveInt | None = None
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 0.0
    warmup_epochs: NonNegativeFloat = 0.0
    seed: int = 0
    eval_batch_size: PositiveInt = 512
    threads: PositiveInt = 1
    max_seconds: PositiveFloat | None = None

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr`` scaled linearly by the global batch."""
        return self.lr * self.batch_size / (self.reference_batch or self.batch_size)


class TrainJobConfig(_Section):
    """A whole training job: exactly one of ``[dataset]`` (from the store) and ``[data]``
    (loaded directly), a ``[model]`` and ``[train]``."""

    name: str = "train"
    store: str | None = None
    dataset: DatasetSection | None = None
    data: DataConfig | None = None
    model: ModelConfig
    train: TrainSection = TrainSection()
    task: TaskSection | None = None

    @model_validator(mode="after")
    def _one_data_source(self) -> TrainJobConfig:
        if (self.dataset is None) == (self.data is None):
            raise ValueError("give exactly one of [dataset] (from the store) and [data]")
        return self


def parse_train_config(data: dict[str, Any], source: str = "config") -> TrainJobConfig:
    """Validate a parsed job dict; raises :class:`ConfigError` with one line."""
    try:
        return TrainJobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainJobConfig:
    """Read a TOML job file, apply ``key.sub=value`` overrides and validate it."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_train_config(apply_overrides(data, overrides or []), str(path))
