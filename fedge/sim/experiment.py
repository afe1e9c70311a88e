"""A federated simulation from an :class:`~fedge.config.ExperimentConfig` to a trained model.

:func:`prepare` resolves everything that can fail on bad input (data, partition, model,
cohort size) before any training or output happens; :func:`run` then trains round after
round, evaluating the global model on the test set.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedge.config import CanvasesData, CocoData, ExperimentConfig, StoreData
from fedge.data.dataset import FederatedData
from fedge.data.load import load_data, load_federated_detection, partition_data
from fedge.data.store import load_store_data
from fedge.errors import ConfigError
from fedge.fl.local import LocalTraining, evaluate, set_params
from fedge.fl.rounds import RoundCoordinator, RoundPolicy, RoundTally
from fedge.fl.sampling import clients_per_round, sample_clients
from fedge.fl.strategy import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState
from fedge.models.spec import ModelSpec, build_model, count_parameters, fast_layout
from fedge.privacy.plan import PrivacyPlan, plan_privacy
from fedge.privacy.secagg import SecAggAborted, SecureAggregation
from fedge.privacy.secagg.aggregation import secagg_settings
from fedge.sim.adversity import (
    attack_update,
    flip_labels,
    malicious_clients,
    straggler_budgets,
)
from fedge.sim.build import check_cohort, check_task_kind, detector_spec, make_strategy, model_spec
from fedge.sim.engine import ClientData, Engine, SequentialEngine
from fedge.sim.outputs import RunDirectory, peak_memory_mb
from fedge.sim.ray_engine import RayEngine
from fedge.sim.threads import default_threads
from fedge.sim.vectorized import VectorizedEngine, check_vectorizable
from fedge.tasks import Classification, Task
from fedge.traffic import UpdateMeter, fingerprint_test_set, traffic_summary

__all__ = [
    "Federation",
    "Observer",
    "RunResult",
    "make_engine",
    "prepare",
    "run",
    "run_to_folder",
]

log = logging.getLogger("fedge.sim")


class Observer(Protocol):
    """Receives progress events (the CLI draws progress bars from them)."""

    def round_started(self, round: int, num_clients: int) -> None: ...

    def client_finished(self, update: ClientUpdate) -> None: ...

    def round_finished(self, metrics: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Federation:
    """Everything a simulation needs, resolved and validated."""

    config: ExperimentConfig
    data: FederatedData
    partition: list[np.ndarray]
    clients: ClientData
    spec: ModelSpec
    strategy: Strategy
    local: LocalTraining
    cohort: int
    malicious: frozenset[int] = frozenset()
    straggler_policy: str = "drop"
    privacy: PrivacyPlan | None = None
    #: What the model learns; ``None`` is classification (:attr:`LocalTraining.task`).
    task: Task | None = None

    @property
    def rounds(self) -> int:
        """Rounds to train: the config's, or fewer when the privacy budget stops earlier."""
        return self.privacy.rounds if self.privacy is not None else self.config.rounds

    @property
    def metric_names(self) -> tuple[str, ...]:
        """What an evaluation measures (``test_``-prefixed in a round's metrics): loss and
        accuracy, or a detector's loss and COCO mAP (``map``, ``map50``)."""
        return ("accuracy", "loss") if self.task is None else ("loss", "map", "map50")

    @property
    def headline(self) -> str:
        """The round metric that ranks rounds: ``test_accuracy``, or a detector's
        ``test_map50``."""
        return "test_" + ("accuracy" if self.task is None else self.task.headline_metric)


def prepare(config: ExperimentConfig) -> Federation:
    """Load data, partition it and build the model spec; raise on any inconsistency.

    Sets torch's thread count to ``threads``, or when unset to PyTorch's default for a
    fresh process (:func:`~fedge.sim.threads.default_threads`), not to whatever an earlier
    ``torch.set_num_threads`` in this process left."""
    torch.set_num_threads(config.threads or default_threads())
    data, spec, task = _data_and_model(config)
    partition = partition_data(data, config.partition, seed=config.seed)
    if any(len(p) == 0 for p in partition):
        raise ConfigError("the partition leaves some client with no training example")
    c = config.client
    local = LocalTraining(
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        drop_last=c.drop_last,
        task=task,
    )
    cohort = clients_per_round(
        len(partition),
        count=config.server.clients_per_round,
        fraction=None if config.server.clients_per_round else (config.server.fraction or 1.0),
    )
    malicious: frozenset[int] = frozenset()
    y = data.train.y
    if config.attack is not None:
        malicious = malicious_clients(len(partition), config.attack.fraction, seed=config.seed)
        if config.attack.kind == "label_flip":
            if task is not None:
                raise ConfigError(
                    "the label_flip attack flips class labels; detection data has boxes: "
                    "choose another attack kind"
                )
            rows = [torch.as_tensor(partition[k], dtype=torch.int64) for k in sorted(malicious)]
            y = flip_labels(y, rows, data.num_classes)
    strategy = make_strategy(config.strategy, num_clients=len(partition), local=local)
    check_cohort(config.strategy, cohort)
    privacy = None
    if config.privacy is not None and config.privacy.dp != "none":
        privacy = plan_privacy(
            config.privacy,
            num_clients=len(partition),
            clients_per_round=cohort,
            rounds=config.rounds,
            dimension=(  # distributed DP's scale depends on the values per update
                count_parameters(build_model(spec)) if config.privacy.dp == "distributed" else None
            ),
        )
        strategy = privacy.wrap(strategy, seed=config.seed)
    if config.privacy is not None and config.privacy.secure_aggregation is not None:
        settings = secagg_settings(
            config.privacy.secure_aggregation,
            largest_client=max(len(rows) for rows in partition),
        )
        strategy = SecureAggregation(strategy, settings, seed=config.seed)
    policy = config.system.policy
    if policy == "auto":
        policy = "partial" if strategy.accepts_partial_work else "drop"
    return Federation(
        config=config,
        data=data,
        partition=partition,
        clients=ClientData.from_partition(data.train.x, y, partition),
        spec=spec,
        strategy=strategy,
        local=local,
        cohort=cohort,
        malicious=malicious,
        straggler_policy=policy,
        privacy=privacy,
        task=task,
    )


def _data_and_model(config: ExperimentConfig) -> tuple[FederatedData, ModelSpec, Task | None]:
    """The experiment's data, its model spec and its task (``None`` for classification):
    for detection data (``canvases``, ``coco``, a dataset version of boxes) a detector
    (:func:`~fedge.sim.build.detector_spec`), which the vectorized engine cannot train."""
    section = config.task
    if isinstance(config.data, StoreData):
        data = load_store_data(config.data, seed=config.seed, boxes=True)
    elif isinstance(config.data, CanvasesData | CocoData):
        if config.engine == "vectorized":  # refused before the data is made
            check_vectorizable("detection")
        data = load_federated_detection(config.data, seed=config.seed)
    else:
        data = load_data(config.data, seed=config.seed)
    if data.train.y.ndim == 1:
        check_task_kind(section, "classification", data.name)
        return data, model_spec(config, data), None
    check_task_kind(section, "detection", data.name)
    if config.engine == "vectorized":
        check_vectorizable("detection")
    spec, task = detector_spec(
        config.model,
        data.train,
        data.name,
        score_threshold=None if section is None else section.score_threshold,
        max_detections=None if section is None else section.max_detections,
    )
    return data, spec, task


@dataclass
class RunResult:
    """The outcome of :func:`run`."""

    state: ServerState
    history: list[dict[str, Any]] = field(default_factory=list)
    num_parameters: int = 0
    seconds: float = 0.0
    participants: int = 0


def _collect(
    fed: Federation,
    updates: Iterator[ClientUpdate],
    task: ClientTask,
    states: dict[int, Mapping[str, Params]],
    observer: Observer | None,
) -> Iterator[ClientUpdate]:
    """What only a simulation does with a round's updates before the round engine checks
    and aggregates them: keep each client's own state, let attackers tamper, report."""
    for update in updates:
        if update.client_state is not None:
            states[update.client] = update.client_state
        if update.client in fed.malicious and fed.config.attack is not None:
            update = attack_update(update, task, fed.config.attack, seed=fed.config.seed)
        if observer is not None:
            observer.client_finished(update)
        yield update


def _evaluate(
    fed: Federation, model: torch.nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Metrics of ``params`` on ``(x, y)`` named as :attr:`Federation.metric_names`."""
    batch = fed.config.eval.batch_size
    if fed.task is None:
        loss, accuracy = evaluate(model, x, y, params=params, batch_size=batch)
        return {"accuracy": accuracy, "loss": loss}
    set_params(model, params)
    return fed.task.evaluate(model, x, y, batch_size=batch)


def _client_eval(fed: Federation, model: torch.nn.Module, params: Params, clients) -> dict:
    """Sample-weighted loss and accuracy of the global model on the sampled clients' data
    (their natural test rows when the dataset has them, else their training rows); a
    detector's loss and mAP on the union of their images (mAP is not a mean over images)."""
    if fed.task is not None:
        rows = torch.cat([fed.clients.indices[int(k)] for k in clients])
        found = _evaluate(fed, model, params, fed.clients.x[rows], fed.clients.y[rows])
        return {f"client_eval_{k}": v for k, v in found.items()}
    loss = acc = 0.0
    total = 0
    tests = fed.data.natural_test_partition
    for k in clients:
        if tests is not None:
            rows = torch.as_tensor(tests[int(k)], dtype=torch.int64)
            x, y = fed.data.test.x[rows], fed.data.test.y[rows]
        else:
            x, y = fed.clients.client(int(k))
        if len(y) == 0:
            continue
        batch = fed.config.eval.batch_size
        lk, ak = evaluate(model, x, y, params=params, batch_size=batch)
        loss += lk * len(y)
        acc += ak * len(y)
        total += len(y)
    if total == 0:
        return {}
    return {"client_eval_loss": loss / total, "client_eval_accuracy": acc / total}


def make_engine(fed: Federation) -> Engine:
    """The engine the experiment's ``engine`` key names (close it after use)."""
    cfg = fed.config
    if cfg.engine == "vectorized":
        return VectorizedEngine(
            fed.spec, fed.clients, fed.local, seed=cfg.seed, max_memory=cfg.max_memory_mb * 2**20
        )
    if cfg.engine == "ray":
        return RayEngine(
            fed.spec,
            fed.clients,
            fed.local,
            seed=cfg.seed,
            address=cfg.ray_address,
            workers=cfg.ray_workers,
        )
    return SequentialEngine(fed.spec, fed.clients, fed.local, seed=cfg.seed)


def _stragglers(fed: Federation, clients: np.ndarray, round: int) -> dict[int, int]:
    """Step budgets of this round's stragglers (empty without system heterogeneity)."""
    fraction = fed.config.system.stragglers
    if not fraction:
        return {}
    sizes = fed.clients.sizes()
    full = [fed.local.epochs * fed.local.steps_per_epoch(int(sizes[k])) for k in clients]
    return straggler_budgets(clients, fraction, full, seed=fed.config.seed, round=round)


def run(
    fed: Federation,
    *,
    observer: Observer | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``fed.config.rounds`` rounds and return the final state and per-round metrics.

    ``on_round`` receives each round's metrics as soon as the round ends (the CLI appends
    them to ``metrics.jsonl``). The engine is closed at the end, also on failure.
    """
    with closing(make_engine(fed)) as engine:
        return _run_rounds(fed, engine, observer=observer, on_round=on_round)


def _run_rounds(
    fed: Federation,
    engine: Engine,
    *,
    observer: Observer | None,
    on_round: Callable[[dict[str, Any]], None] | None,
) -> RunResult:
    """The rounds of :func:`run` on an open ``engine``."""
    cfg = fed.config
    model = build_model(fed.spec, seed=cfg.seed)
    initial = dict(model.named_parameters())
    if fed.task is not None:
        initial = fed.task.init_params(fed.spec, initial)
    rounds = RoundCoordinator(
        fed.strategy,
        fed.strategy.init(initial),
        RoundPolicy(target=fed.cohort),
        rounds=fed.rounds,
    )
    fast_layout(model)  # from here on the evaluation work area
    test = fed.data.test
    result = RunResult(state=rounds.state, num_parameters=count_parameters(model))
    client_states: dict[int, Mapping[str, Params]] = {}
    meter = UpdateMeter()
    start = time.perf_counter()
    for r in range(1, fed.rounds + 1):
        t0 = time.perf_counter()
        clients = sample_clients(fed.clients.num_clients, fed.cohort, seed=cfg.seed, round=r)
        budgets = _stragglers(fed, clients, r)
        stragglers, dropped = len(budgets), 0
        if fed.straggler_policy == "drop" and budgets:
            clients = [k for k in clients if k not in budgets]
            dropped, budgets = len(budgets), {}
        if observer is not None:
            observer.round_started(r, len(clients))
        current = rounds.open(r)
        for k in clients:
            current.assign(str(k), t0)
        task = rounds.task()
        meter.downloads(task, clients)
        trained = engine.train_round(
            fed.strategy, task, clients, states=client_states, max_steps=budgets
        )
        tally = RoundTally()
        before = rounds.state
        aborted = None
        try:
            collected = _collect(fed, trained, task, client_states, observer)
            state = rounds.close(meter.uploads(collected), tally)
        except SecAggAborted as exc:  # nothing of the round is released; the model stays
            rounds.abandon()
            state, aborted = before, str(exc)
            log.warning("round %d: %s", r, exc)
        train_seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "round": r,
            **{f"test_{name}": None for name in fed.metric_names},
            "train_loss": tally.train_loss,
            "clients": tally.clients,
            "rejected": tally.rejected,
            "stragglers": stragglers,
            "dropped": dropped,
            "samples": tally.samples,
            "clients_per_second": tally.clients / train_seconds,
            "samples_per_second": tally.examples / train_seconds,
            **meter.line(tally.examples),
        }
        if isinstance(fed.strategy, SecureAggregation):
            metrics["secure_aggregation"] = (
                {"aborted": aborted} if aborted else fed.strategy.last_round
            )
        if fed.privacy is not None:
            metrics["epsilon"] = fed.privacy.epsilon(r)
            if fed.privacy.adaptive is not None:
                metrics["clip_norm"] = float(before.extras["dp"]["clip_norm"])  # this round's
        last = r == fed.rounds or (
            cfg.max_seconds is not None and time.perf_counter() - start >= cfg.max_seconds
        )
        if r % cfg.eval.every == 0 or last:
            found = _evaluate(fed, model, state.params, test.x, test.y)
            metrics.update({f"test_{name}": found[name] for name in fed.metric_names})
            if cfg.eval.client_eval:
                metrics.update(_client_eval(fed, model, state.params, clients))
        metrics["seconds"] = time.perf_counter() - t0
        result.history.append(metrics)
        if on_round is not None:
            on_round(metrics)
        if observer is not None:
            observer.round_finished(metrics)
        if last:
            break
    result.state = state
    result.seconds = time.perf_counter() - start
    result.participants = len(meter.seen)
    return result


def run_to_folder(
    fed: Federation, out: Path, *, observer: Observer | None = None, overwrite: bool = False
) -> tuple[dict[str, Any], Path]:
    """:func:`run` with every output written to ``out`` (see :mod:`fedge.sim.outputs`).

    Returns the summary and the folder. On failure the files written so far stay in
    ``<out>.partial`` and the error propagates.
    """
    cfg = fed.config
    folder = RunDirectory(out, overwrite=overwrite)
    folder.write_config(cfg)
    try:
        result = run(fed, observer=observer, on_round=folder.append_metrics)
    except BaseException:
        folder.abandon()
        raise
    key = fed.headline
    evaluated = [m for m in result.history if m[key] is not None]
    last = evaluated[-1]
    best = max(evaluated, key=lambda m: m[key] if math.isfinite(m[key]) else -math.inf)
    summary = {
        "name": cfg.name,
        "dataset": fed.data.name,
        "strategy": fed.strategy.name,
        "engine": cfg.engine,
        "model": fed.spec.name,
        "num_parameters": result.num_parameters,
        "num_clients": fed.clients.num_clients,
        "clients_per_round": fed.cohort,
        "rounds": len(result.history),
        "seed": cfg.seed,
        "data_version": fed.data.name if isinstance(cfg.data, StoreData) else None,
        "num_train": len(fed.data.train),
        "num_test": len(fed.data.test),
        "test_set_sha256": fingerprint_test_set(fed.data.test.x, fed.data.test.y),
        "task": (fed.task or Classification(fed.data.num_classes)).to_dict(),
        **{f"final_test_{name}": last[f"test_{name}"] for name in fed.metric_names},
        f"best_{key}": best[key],
        "best_round": best["round"],
        "seconds": result.seconds,
        "seconds_per_round": result.seconds / len(result.history),
        "peak_memory_mb": peak_memory_mb(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **traffic_summary(
            result.history, num_train=len(fed.data.train), participants=result.participants
        ),
    }
    if fed.privacy is not None:
        summary["privacy"] = fed.privacy.summary(len(result.history))
    return summary, folder.finish(summary, result.history, result.state.params, fed.spec)
