"""Comparison files: one task, a budget and a list of arms, as a typed schema.

A comparison trains the same model on the same dataset version, evaluated on the same test
set, under the same budget, in several *arms*::

    name = "fmnist"
    seed = 0                    # every arm's seed (model init, batches, partitions, hold-out)
    target_accuracy = 0.85      # for "time to reach"
    # store = "./fedge-store"   # else --store, $FEDGE_STORE, ./fedge-store
    # threads = 2               # torch threads of arms that run in this process

    [dataset]                   # a dataset version in the store, read by every arm
    name = "fmnist"
    version = "latest"          # pinned to its number when the comparison starts
    [dataset.source]            # optional: uploaded as the first version if there is none
    name = "fashion_mnist"

    [model]
    preset = "lenet"

    [budget]                    # exactly one of the two
    epochs = 10                 # passes over the training data, in every arm
    # seconds = 120             # or a wall-clock limit per arm

    [[arms]]
    name = "central"
    kind = "central"            # one process
    train = { batch_size = 64, lr = 0.01, momentum = 0.9 }

    [[arms]]
    name = "large-batch"
    kind = "data_parallel"      # torch.distributed workers on this machine
    workers = 2
    batch_sizes = [256, 1024]   # one arm per global batch: large-batch-b256, ...-b1024
    train = { lr = 0.01, reference_batch = 64, warmup_epochs = 1, momentum = 0.9 }

    [[arms]]
    name = "fedavg-dir0.5"
    kind = "federated"
    partition = { scheme = "dirichlet", num_clients = 10, beta = 0.5 }
    server = { clients_per_round = 10 }
    client = { epochs = 1, batch_size = 64, lr = 0.01, momentum = 0.9 }
    strategy = { name = "fedavg" }

A ``train`` table takes the keys of ``fedge train``'s ``[train]`` except ``epochs``,
``max_seconds`` and ``seed``, which the budget and the comparison set; the federated keys
are those of ``fedge simulate`` (``partition``, ``client``, ``server``, ``strategy`` with
any strategy by name, ``eval``, ``engine``, ``threads``, ``max_memory_mb``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from fedge.central.train_config import TrainSection
from fedge.config import (
    ClientConfig,
    DataConfig,
    EvalConfig,
    FedAvgConfig,
    ModelConfig,
    PartitionConfig,
    ServerConfig,
    StrategyConfig,
    apply_overrides,
    describe_validation_error,
)
from fedge.errors import ConfigError

__all__ = [
    "Arm",
    "Budget",
    "CentralArm",
    "CompareConfig",
    "CompareDataset",
    "DataParallelArm",
    "FederatedArm",
    "load_compare_config",
    "parse_compare_config",
]

_ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
# Set by the comparison for every arm alike, never by one arm.
_BUDGET_KEYS = ("epochs", "max_seconds", "seed")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompareDataset(_Section):
    """The dataset every arm reads: version ``version`` of ``name`` in the store.

    ``test_fraction`` of the training examples are held out (seeded by the comparison's
    seed, the same rows for every arm) when the version has no test split. ``source`` is a
    ``[data]`` section uploaded as the dataset's first version when the store has none.
    """

    name: str
    version: PositiveInt | Literal["latest"] = "latest"
    test_fraction: float = Field(0.1, gt=0, lt=1)
    source: DataConfig | None = None


class Budget(_Section):
    """What every arm may spend: ``epochs`` passes over the training data (a federated
    arm trains rounds until its clients have processed that many examples), or a
    wall-clock limit of ``seconds`` per arm (no epoch or round starts after it; at most
    ``max_epochs`` passes)."""

    epochs: PositiveInt | None = None
    seconds: PositiveFloat | None = None
    max_epochs: PositiveInt = 1000

    @model_validator(mode="after")
    def _one_budget(self) -> Budget:
        if (self.epochs is None) == (self.seconds is None):
            raise ValueError("give exactly one of budget.epochs and budget.seconds")
        return self

    def describe(self) -> str:
        """The budget in words, for the report."""
        if self.epochs is not None:
            return f"{self.epochs} passes over the training data per arm"
        return f"{self.seconds:g} s of wall-clock time per arm (at most {self.max_epochs} passes)"


class _Arm(_Section):
    name: str

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not _ARM_NAME.fullmatch(name):
            raise ValueError(
                f"arm name {name!r} must be 1-80 letters, digits, '.', '_' or '-' "
                "(it names the arm's folder)"
            )
        return name


class _JobArm(_Arm):
    train: TrainSection = TrainSection()
    batch_sizes: list[PositiveInt] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _budget_is_shared(self) -> _JobArm:
        given = [key for key in _BUDGET_KEYS if key in self.train.model_fields_set]
        if given:
            raise ValueError(
                f"train.{given[0]} is set by the comparison for every arm (budget, seed)"
            )
        if self.batch_sizes is not None and "batch_size" in self.train.model_fields_set:
            raise ValueError("give train.batch_size or batch_sizes, not both")
        return self


class CentralArm(_JobArm):
    """Training in one process on the pooled data (``fedge train``)."""

    kind: Literal["central"]


class DataParallelArm(_JobArm):
    """Data-parallel training over ``torch.distributed`` with ``workers`` processes on this
    machine, one torch thread each unless ``train.threads`` says otherwise
    (``fedge train --workers``; learning rate scaled from ``train.reference_batch`` with
    warm-up)."""

    kind: Literal["data_parallel"]
    workers: int = Field(2, ge=2)


class FederatedArm(_Arm):
    """A federated simulation (``fedge simulate``) on a partition of the training data."""

    kind: Literal["federated"]
    partition: PartitionConfig
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    strategy: StrategyConfig = FedAvgConfig()
    eval: EvalConfig = EvalConfig()
    engine: Literal["sequential", "vectorized", "ray"] = "vectorized"
    threads: PositiveInt | None = None
    max_memory_mb: PositiveInt = 2048


Arm = Annotated[CentralArm | DataParallelArm | FederatedArm, Field(discriminator="kind")]


class CompareConfig(_Section):
    """A whole comparison (see the module docstring).

    ``target_accuracy`` (a fraction, e.g. 0.85) is what "time to reach" measures; by
    default 90% of the best test accuracy any arm reached. ``threads`` sets the torch
    threads of the arms that run in this process (central and federated) unless an arm
    sets its own; by default torch's (all cores).
    """

    name: str = "compare"
    seed: int = 0
    store: str | None = None
    target_accuracy: float | None = Field(None, gt=0, le=1)
    threads: PositiveInt | None = None
    dataset: CompareDataset
    model: ModelConfig
    budget: Budget
    arms: list[Arm] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> CompareConfig:
        names = [arm.name for arm in self.expanded_arms()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"arm names must be unique, got {', '.join(twice)} twice")
        return self

    def expanded_arms(self) -> list[CentralArm | DataParallelArm | FederatedArm]:
        """The arms as they run: an arm with ``batch_sizes`` becomes one arm per size,
        named ``<name>-b<size>``."""
        out: list[CentralArm | DataParallelArm | FederatedArm] = []
        for arm in self.arms:
            if isinstance(arm, CentralArm | DataParallelArm) and arm.batch_sizes is not None:
                for size in arm.batch_sizes:
                    train = arm.train.model_copy(update={"batch_size": size})
                    out.append(
                        arm.model_copy(
                            update={
                                "name": f"{arm.name}-b{size}",
                                "train": train,
                                "batch_sizes": None,
                            }
                        )
                    )
            else:
                out.append(arm)
        return out


def parse_compare_config(data: dict[str, Any], source: str = "config") -> CompareConfig:
    """Validate a parsed comparison dict; raises :class:`ConfigError` with one line."""
    try:
        return CompareConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read a TOML comparison file, apply ``key.sub=value`` overrides and validate it.

    An override reaches into one arm by its position or its name (as written in the file,
    without dots): ``arms.0.train.lr=0.1``, ``arms.central.train.lr=0.1``.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_compare_config(_apply(data, overrides or []), str(path))


def _apply(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """:func:`fedge.config.apply_overrides`, plus ``arms.<i or name>.`` for one arm."""
    plain = []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not (sep and len(parts) > 2 and parts[0] == "arms"):
            plain.append(item)
            continue
        arms = data.get("arms")
        arms = arms if isinstance(arms, list) else []
        if parts[1].isdigit():
            matches = arms[int(parts[1]) : int(parts[1]) + 1]
        else:
            matches = [a for a in arms if isinstance(a, dict) and a.get("name") == parts[1]]
        if len(matches) != 1:
            raise ConfigError(f"override {item!r}: there is no arm {parts[1]!r}")
        apply_overrides(matches[0], [f"{'.'.join(parts[2:])}={value}"])
    return apply_overrides(data, plain)
