"""Objects an experiment config names: aggregator, strategy, model spec and task."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fedge.config import (
    AggregatorConfig,
    ExperimentConfig,
    FedAvgMConfig,
    FedNovaConfig,
    FedOptConfig,
    FedProxConfig,
    KrumAggregator,
    MedianAggregator,
    ModelConfig,
    ScaffoldConfig,
    StrategyConfig,
    TaskSection,
    TrimmedMeanAggregator,
)
from fedge.data.dataset import FederatedData
from fedge.errors import ConfigError
from fedge.fl.aggregators import Aggregator, Krum, Median, NormBound, TrimmedMean, WeightedMean
from fedge.fl.local import LocalTraining
from fedge.fl.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedNova,
    FedProx,
    FedYogi,
    Scaffold,
    Strategy,
)
from fedge.models.spec import ModelSpec, load_spec, preset_spec

if TYPE_CHECKING:
    from fedge.data.detection import DetectionDataset
    from fedge.tasks import Detection

__all__ = [
    "check_cohort",
    "check_task_kind",
    "detector_spec",
    "make_aggregator",
    "make_strategy",
    "model_spec",
]


def make_aggregator(config: AggregatorConfig) -> Aggregator:
    """The aggregator a ``[strategy.aggregator]`` section names."""
    inner: Aggregator
    if isinstance(config, MedianAggregator):
        inner = Median()
    elif isinstance(config, TrimmedMeanAggregator):
        inner = TrimmedMean(config.beta)
    elif isinstance(config, KrumAggregator):
        inner = Krum(f=config.f, m=config.m or 1)
    else:
        inner = WeightedMean()
    return inner if config.clip_norm is None else NormBound(config.clip_norm, inner)


def check_cohort(config: StrategyConfig, updates: int) -> None:
    """Refuse a strategy whose aggregator cannot work with as few as ``updates`` per round
    (Krum tolerating f attackers needs more than 2f + 2)."""
    agg = config.aggregator
    if isinstance(agg, KrumAggregator) and updates <= 2 * agg.f + 2:
        raise ConfigError(
            f"{agg.name} with f={agg.f} needs more than {2 * agg.f + 2} client updates per "
            f"round, got {updates}"
        )


def make_strategy(config: StrategyConfig, *, num_clients: int, local: LocalTraining) -> Strategy:
    """The strategy object a ``[strategy]`` section names."""
    agg = make_aggregator(config.aggregator)
    if isinstance(config, FedAvgMConfig):
        return FedAvgM(
            server_lr=config.server_lr, server_momentum=config.server_momentum, aggregator=agg
        )
    if isinstance(config, FedOptConfig):
        cls = {"fedadagrad": FedAdagrad, "fedadam": FedAdam, "fedyogi": FedYogi}[config.name]
        return cls(
            server_lr=config.server_lr,
            beta1=config.beta1,
            beta2=config.beta2,
            tau=config.tau,
            aggregator=agg,
        )
    if isinstance(config, FedProxConfig):
        return FedProx(mu=config.mu, aggregator=agg)
    if isinstance(config, ScaffoldConfig):
        return Scaffold(num_clients=num_clients, server_lr=config.server_lr, aggregator=agg)
    if isinstance(config, FedNovaConfig):
        return FedNova(momentum=local.momentum, aggregator=agg)
    return FedAvg(aggregator=agg)


def model_spec(config: ExperimentConfig | ModelConfig, data: FederatedData) -> ModelSpec:
    """The model spec an experiment's (or a training job's) ``[model]`` section names,
    checked against the data: a spec file must take the examples' shape and output one
    logit per class."""
    model = config.model if isinstance(config, ExperimentConfig) else config
    if model.preset == "centernet":
        raise ConfigError(f"the centernet preset is a detector; {data.name} holds class labels")
    if model.spec is None:
        return preset_spec(
            model.preset or "logreg", data.input_shape, data.num_classes, hidden=model.hidden
        )
    spec = load_spec(model.spec)
    if tuple(spec.input_shape) != data.input_shape:
        raise ConfigError(
            f"model spec expects input {list(spec.input_shape)} but {data.name} examples "
            f"have shape {list(data.input_shape)}"
        )
    outputs = spec.output_shapes()[-1]
    if outputs != (data.num_classes,):
        raise ConfigError(
            f"model spec outputs {list(outputs)} but {data.name} has {data.num_classes} classes"
        )
    return spec


def check_task_kind(section: TaskSection | None, kind: str, data: str) -> None:
    """A :class:`ConfigError` if a ``[task]`` section's ``kind`` is not ``kind``, the kind
    of the data called ``data``."""
    if section is not None and section.kind not in (None, kind):
        raise ConfigError(f"[task] kind is {section.kind}, but {data} holds {kind} data")


def detector_spec(
    model: ModelConfig,
    train: DetectionDataset,
    name: str,
    *,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> tuple[ModelSpec, Detection]:
    """The detector a ``[model]`` section names for detection data ``train`` (called
    ``name`` in errors), and the :class:`~fedge.tasks.Detection` task its output map
    defines; ``score_threshold`` and ``max_detections`` are the task's serving defaults
    (the task's own when ``None``)."""
    from fedge.tasks import Detection

    if model.spec is not None:
        spec = load_spec(model.spec)
    elif model.preset == "centernet":
        spec = preset_spec("centernet", train.input_shape, train.num_classes)
    else:
        raise ConfigError(
            f'{name} is detection data: use model.preset = "centernet" or a detector spec '
            f"file, not the {model.preset} classifier"
        )
    options: dict[str, float | int] = {}
    if score_threshold is not None:
        options["score_threshold"] = score_threshold
    if max_detections is not None:
        options["max_detections"] = max_detections
    task = Detection.from_spec(spec, **options)
    if task.num_classes != train.num_classes or tuple(spec.input_shape) != train.input_shape:
        raise ConfigError(
            f"model {spec.name!r} detects {task.num_classes} classes in "
            f"{list(spec.input_shape)} images, {name} has {train.num_classes} classes in "
            f"{list(train.input_shape)} images"
        )
    return spec, replace(task, categories=tuple(train.categories))
