"""Running a comparison: every arm with fedge's own machinery, into one folder.

``<out>/config.toml`` is the resolved comparison (the dataset version pinned to its number,
the store named); ``<out>/arms/<arm>/`` is each arm's own output folder, exactly as
``fedge train`` (central and data-parallel arms, :func:`~fedge.central.jobs.run_job`) or
``fedge simulate`` (federated arms, :func:`~fedge.sim.experiment.run_to_folder`) writes
it, with its ``metrics.jsonl`` and ``summary.json``; the report is made from those files
alone (:mod:`fedge.compare.report`).

Running the same comparison into the same folder again resumes it: finished arms (a folder
without ``.partial``) are not run again, an interrupted training job continues from its
last checkpoint, and an interrupted simulation starts over. A different config is refused
(``force`` starts over).

Every arm reads the same dataset version, with the same seed (so the same hold-out test
set when the version has none), and gets the same budget: ``budget.epochs`` passes over
the training data (``epochs`` for a training job; for a federated arm the rounds after
which its sampled clients have processed ``epochs × num_train`` examples, computed from
the partition and the client sampling before it starts), or ``budget.seconds`` of
wall-clock time (``max_seconds``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import tomli_w
import torch

from fedge.central.train_config import TrainJobConfig
from fedge.compare.config import (
    CentralArm,
    CompareConfig,
    DataParallelArm,
    FederatedArm,
    parse_compare_config,
)
from fedge.config import ExperimentConfig, read_toml
from fedge.errors import (
    ConfigError,
    DataError,
    FedgeError,
    ModelSpecError,
    StorageError,
)
from fedge.fl.sampling import sample_clients

__all__ = [
    "CompareObserver",
    "arm_folder",
    "experiment_config",
    "failure_file",
    "job_config",
    "open_comparison",
    "rounds_for_epochs",
    "run_arm",
    "run_comparison",
]

AnyArm = CentralArm | DataParallelArm | FederatedArm
_MAX_ROUNDS = 1_000_000


class CompareObserver(Protocol):
    """Progress of a comparison (the CLI draws it with rich)."""

    def comparison_started(self, arms: list[str], finished: list[str]) -> None: ...

    def arm_started(self, name: str, index: int, total: int) -> None: ...

    def arm_progress(self, fraction: float, status: str) -> None: ...

    def arm_finished(self, name: str, summary: dict[str, Any], skipped: bool) -> None: ...

    def arm_failed(self, name: str, error: str) -> None: ...


def arm_folder(out: Path, name: str) -> Path:
    """Where arm ``name`` of the comparison in ``out`` writes its files."""
    return Path(out) / "arms" / name


def failure_file(out: Path, name: str) -> Path:
    """Where the error of arm ``name`` is kept when its training failed."""
    return Path(out) / "arms" / f"{name}.failed.json"


def _dump(config: CompareConfig, *, exclude_unset: bool = False) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True, exclude_unset=exclude_unset)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def open_comparison(
    config: CompareConfig, out: Path, *, store: str | None = None, force: bool = False
) -> CompareConfig:
    """Resolve ``config`` for the folder ``out`` and write it there.

    The store is ``store`` (command line), else the config's, else ``$FEDGE_STORE``, else
    ``./fedge-store``. A new comparison uploads ``dataset.source`` when the dataset has no
    version yet and pins ``latest`` to the newest version's number. A folder that already
    holds a comparison keeps its pinned version; any other difference is a
    :class:`ConfigError` unless ``force``, which deletes the old results.
    """
    from fedge.central.datasets import DatasetStore
    from fedge.central.storage import default_store_url, open_store

    out = Path(out)
    url = store or config.store or default_store_url()
    config = config.model_copy(update={"store": url})
    saved = out / "config.toml"
    if saved.is_file() and not force:
        old = parse_compare_config(read_toml(saved), str(saved))
        if config.dataset.version == "latest":
            pinned = config.dataset.model_copy(update={"version": old.dataset.version})
            config = config.model_copy(update={"dataset": pinned})
        changed = _differences(_dump(config), _dump(old))
        if changed:
            raise ConfigError(
                f"{out} holds a comparison whose config differs in {', '.join(changed)}: "
                "use --force to start over, or another --out"
            )
        return old
    if force:
        shutil.rmtree(out / "arms", ignore_errors=True)
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} already holds files: use --force")
    datasets = DatasetStore(open_store(url))
    ds = config.dataset
    if not datasets.version_numbers(ds.name):
        if ds.source is None:
            raise DataError(
                f"dataset {ds.name!r} is not in {url}: upload it (fedge data upload) or "
                "give [dataset.source]"
            )
        _upload(datasets, ds.name, ds.source, config.seed)
    version = datasets.get(ds.name, ds.version)
    config = config.model_copy(
        update={"dataset": ds.model_copy(update={"version": version.version})}
    )
    out.mkdir(parents=True, exist_ok=True)
    # Only what was given: a key the file leaves out stays out, so that reading it back
    # gives the same config (arms may not set the keys the comparison sets).
    saved.write_text(tomli_w.dumps(_dump(config, exclude_unset=True)))
    return config


def _upload(datasets: Any, name: str, source: Any, seed: int) -> None:
    """Load the ``[data]`` section ``source`` and store it as the first version of
    ``name`` (recorded as ``fedge data upload`` records it)."""
    from fedge.central.datasets import DatasetArrays
    from fedge.data.load import load_data

    data = load_data(source, seed=seed)
    description = json.dumps(source.model_dump(mode="json", exclude_none=True))
    datasets.upload(name, DatasetArrays.from_data(data), source=f"data {description} seed {seed}")


def job_config(config: CompareConfig, arm: CentralArm | DataParallelArm) -> TrainJobConfig:
    """The ``fedge train`` job of a central or data-parallel arm."""
    budget = config.budget
    train = arm.train.model_dump(exclude_unset=True)
    train |= {
        "epochs": budget.epochs or budget.max_epochs,
        "max_seconds": budget.seconds,
        "seed": config.seed,
        "batch_size": arm.train.batch_size,
    }
    if isinstance(arm, CentralArm) and "threads" not in arm.train.model_fields_set:
        train["threads"] = config.threads or torch.get_num_threads()
    ds = config.dataset
    return TrainJobConfig.model_validate(
        {
            "name": arm.name,
            "store": config.store,
            "dataset": {"name": ds.name, "version": ds.version, "test_fraction": ds.test_fraction},
            "model": config.model.model_dump(mode="json", exclude_none=True),
            "train": {k: v for k, v in train.items() if v is not None},
        }
    )


def experiment_config(config: CompareConfig, arm: FederatedArm, rounds: int) -> ExperimentConfig:
    """The ``fedge simulate`` experiment of a federated arm, ``rounds`` rounds long."""
    ds = config.dataset

    def plain(section: Any) -> dict[str, Any]:
        return section.model_dump(mode="json", exclude_none=True)

    threads = arm.threads or config.threads
    return ExperimentConfig.model_validate(
        {
            "name": arm.name,
            "seed": config.seed,
            "rounds": rounds,
            "engine": arm.engine,
            "max_memory_mb": arm.max_memory_mb,
            **({"threads": threads} if threads is not None else {}),
            **({"max_seconds": config.budget.seconds} if config.budget.seconds is not None else {}),
            "data": {
                "name": "store",
                "dataset": ds.name,
                "version": ds.version,
                "store": config.store,
                "test_fraction": ds.test_fraction,
            },
            "partition": plain(arm.partition),
            "model": plain(config.model),
            "client": plain(arm.client),
            "server": plain(arm.server),
            "strategy": plain(arm.strategy),
            "eval": plain(arm.eval),
        }
    )


def rounds_for_epochs(fed: Any, epochs: int) -> int:
    """The number of rounds after which the clients that ``fed`` samples have processed
    closest to ``epochs × num_train`` training examples (local epochs times their
    examples, or whole batches only with ``drop_last``; the later round on a tie), from
    the same client sampling the run uses."""
    local = fed.local
    sizes = [int(n) for n in fed.clients.sizes()]
    batch = local.batch_size

    def processed(n: int) -> int:
        if local.drop_last and batch is not None:
            return local.epochs * (n // batch) * batch
        return local.epochs * n

    per_client = [processed(n) for n in sizes]
    if not any(per_client):
        raise ConfigError("no client processes any example: check client.batch_size")
    need = epochs * len(fed.data.train)
    before, done, rounds = 0, 0, 0
    while done < need:
        rounds += 1
        if rounds > _MAX_ROUNDS:
            raise ConfigError(f"the budget needs more than {_MAX_ROUNDS:,} rounds")
        chosen = sample_clients(len(sizes), fed.cohort, seed=fed.config.seed, round=rounds)
        before, done = done, done + sum(per_client[int(k)] for k in chosen)
    return rounds - 1 if rounds > 1 and need - before < done - need else rounds


class _Watcher:
    """Reads an arm's ``metrics.jsonl`` while it runs (in the arm's ``.partial`` folder,
    written by whatever process trains) and reports the fraction of its budget used."""

    def __init__(
        self,
        partial: Path,
        units: int,
        unit: str,
        seconds: float | None,
        report: Callable[[float, str], None],
    ):
        self.path, self.units, self.unit, self.seconds = (
            partial / "metrics.jsonl",
            units,
            unit,
            seconds,
        )
        self.report = report
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _lines(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except OSError:
            return []
        complete = text[: text.rfind("\n") + 1]  # a line being written is not read
        try:
            return [json.loads(line) for line in complete.splitlines() if line]
        except json.JSONDecodeError:
            return []

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            lines = self._lines()
            done = len(lines) / self.units
            if self.seconds is not None:
                done = max(done, (time.monotonic() - self.t0) / self.seconds)
            accs = [m["test_accuracy"] for m in lines if m.get("test_accuracy") is not None]
            status = f"{self.unit} {len(lines)}/{self.units}"
            if self.seconds is not None:
                status = (
                    f"{self.unit} {len(lines)}, {time.monotonic() - self.t0:.0f}/{self.seconds:g} s"
                )
            if accs:
                status += f"  acc {100 * accs[-1]:.2f}%"
            self.report(min(done, 0.999), status)


def run_arm(
    config: CompareConfig, arm: AnyArm, out: Path, observer: CompareObserver | None
) -> dict[str, Any]:
    """Run one arm into ``arm_folder(out, arm.name)`` (resuming an interrupted training
    job); returns its summary."""
    folder = arm_folder(out, arm.name)
    partial = folder.with_name(folder.name + ".partial")
    report = observer.arm_progress if observer is not None else (lambda f, s: None)
    seconds = config.budget.seconds
    if isinstance(arm, FederatedArm):
        from fedge.sim.experiment import prepare, run_to_folder

        fed = prepare(experiment_config(config, arm, 1))
        rounds = rounds_for_epochs(fed, config.budget.epochs or config.budget.max_epochs)
        fed = dataclasses.replace(fed, config=fed.config.model_copy(update={"rounds": rounds}))
        with _Watcher(partial, rounds, "round", seconds, report):
            summary, _ = run_to_folder(fed, folder, overwrite=True)
        return summary
    from fedge.central.job_folder import CHECKPOINT
    from fedge.central.jobs import prepare_job, run_job

    job = prepare_job(job_config(config, arm))
    resume = (partial / CHECKPOINT).is_file()
    workers = arm.workers if isinstance(arm, DataParallelArm) else 1
    with _Watcher(partial, job.config.train.epochs, "epoch", seconds, report):
        result = run_job(job, folder, workers=workers, resume=resume, force=not resume)
    return result.summary


def run_comparison(
    config: CompareConfig,
    out: Path,
    *,
    store: str | None = None,
    force: bool = False,
    observer: CompareObserver | None = None,
) -> tuple[Path, Path]:
    """Run every arm of ``config`` not yet finished in ``out``, then write the report.

    An arm whose training fails (it diverges: a :class:`~fedge.errors.TrainingError`, or
    a round in which every update is rejected) does not stop the others: its error is kept
    in ``arms/<arm>.failed.json`` and named in the report, and a rerun tries it again.
    Bad input (config, data, model spec, store) stops the comparison.

    Returns the paths of ``report.md`` and ``report.html``.
    """
    from fedge.compare.report import write_report

    out = Path(out)
    config = open_comparison(config, out, store=store, force=force)
    arms = config.expanded_arms()
    if observer is not None:
        finished = [a.name for a in arms if (arm_folder(out, a.name) / "summary.json").is_file()]
        observer.comparison_started([a.name for a in arms], finished)
    for index, arm in enumerate(arms):
        folder = arm_folder(out, arm.name)
        if observer is not None:
            observer.arm_started(arm.name, index, len(arms))
        failed = failure_file(out, arm.name)
        if (folder / "summary.json").is_file():
            summary, skipped = json.loads((folder / "summary.json").read_text()), True
        else:
            failed.unlink(missing_ok=True)
            try:
                summary, skipped = run_arm(config, arm, out, observer), False
            except (ConfigError, DataError, ModelSpecError, StorageError):
                raise
            except FedgeError as exc:
                failed.write_text(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
                if observer is not None:
                    observer.arm_failed(arm.name, str(exc))
                continue
        if observer is not None:
            observer.arm_finished(arm.name, summary, skipped)
    return write_report(out)
