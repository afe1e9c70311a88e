"""Running training jobs: from a config to a prepared job, to workers, to a registered model.

``prepare_job`` loads the data (a dataset version from the store, pinned to its number,
or a ``[data]`` section), holds out a test set when the data has none, and builds the
model spec and the task (detection for a dataset version of boxes or a ``canvases`` or
``coco`` ``[data]`` section, whose detector spec defines a
:class:`~fedge.tasks.Detection`; classification otherwise); it runs once, before any
worker starts, so that bad input fails early with one clear error. ``run_job`` opens the
output folder (or the checkpoint to resume) and runs
:func:`~fedge.central.train.train_worker` here or on spawned gloo workers; ``run_env_job``
runs one worker of a group the environment describes (several machines, ``torchrun``).
``register_job`` publishes the final model (ONNX + safetensors + spec) with the job's
summary, data version, resolved config and task; it is called only after a job has finished, so
a failed job leaves the registry as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedge.central.datasets import DatasetStore, DatasetVersion
from fedge.central.ddp import Dist, init_from_env, launch
from fedge.central.job_folder import JobFolder
from fedge.central.publish import publish_model
from fedge.central.registry import ModelRegistry, ModelVersion
from fedge.central.storage import default_store_url, open_store
from fedge.central.train import TrainJob, TrainObserver, TrainResult, train_worker
from fedge.central.train_config import TrainJobConfig
from fedge.central.weights import params_from_bytes
from fedge.config import DETECTION_DATA, CanvasesData, CocoData
from fedge.data.holdout import held_out_rows, hold_out
from fedge.data.load import DETECTION_TEST_FRACTION, load_data, load_detection_data
from fedge.errors import ConfigError, FedgeError
from fedge.models.spec import load_spec
from fedge.sim.build import check_task_kind, detector_spec, model_spec

__all__ = [
    "check_model_name",
    "job_store_url",
    "load_result",
    "prepare_job",
    "register_job",
    "run_env_job",
    "run_job",
]


def job_store_url(config: TrainJobConfig, store: str | None = None) -> str:
    """The store a job reads datasets from and registers into: ``store`` (the command
    line), else the config's ``store``, else ``$FEDGE_STORE``, else ``./fedge-store``."""
    return store or config.store or default_store_url()


def prepare_job(config: TrainJobConfig, *, store: str | None = None) -> TrainJob:
    """Load the job's data and build its model spec.

    Parameters
    ----------
    config:
        The job config.
    store:
        Store URL from the command line (see :func:`job_store_url`).

    Returns
    -------
    TrainJob
        With the config resolved: ``dataset.version`` becomes the number used (``latest``
        is looked up now) and ``store`` the store it came from.
    """
    seed = config.train.seed
    data_version = None
    if config.dataset is not None:
        url = job_store_url(config, store)
        datasets = DatasetStore(open_store(url))
        version = datasets.get(config.dataset.name, config.dataset.version)
        check_task_kind(config.task, version.task, version.ref)
        if version.task == "detection":
            return _prepare_detection(config, datasets, version, url)
        data = datasets.load_data(version)
        data_version = version.ref
        pinned = config.dataset.model_copy(update={"version": version.version})
        config = config.model_copy(update={"dataset": pinned, "store": url})
        if len(data.test) == 0:
            data = hold_out(data, config.dataset.test_fraction, seed)
    else:
        if config.data is None:  # the schema guarantees one of the two
            raise ConfigError("the job has no data: add [dataset] or [data]")
        detection = config.data.name in DETECTION_DATA
        check_task_kind(
            config.task, "detection" if detection else "classification", config.data.name
        )
        if detection:
            return _prepare_detection(config)
        data = load_data(config.data, seed=seed)
        if len(data.test) == 0:
            data = hold_out(data, 0.1, seed)
    spec = model_spec(config.model, data)
    # The models compute in float32; features stored in another float type are converted.
    x_train, x_test = data.train.x, data.test.x
    if x_train.is_floating_point():
        x_train, x_test = x_train.to(torch.float32), x_test.to(torch.float32)
    return TrainJob(
        config=config,
        spec=spec,
        x_train=x_train,
        y_train=data.train.y,
        x_test=x_test,
        y_test=data.test.y,
        data_name=data.name,
        data_version=data_version,
    )


def _prepare_detection(
    config: TrainJobConfig,
    datasets: DatasetStore | None = None,
    version: DatasetVersion | None = None,
    url: str | None = None,
) -> TrainJob:
    """:func:`prepare_job` for detection data: images and boxes, a detector spec (the
    ``centernet`` preset or a spec file) and the :class:`~fedge.tasks.Detection` task
    its output map defines."""
    seed = config.train.seed
    fraction = DETECTION_TEST_FRACTION
    if datasets is not None and version is not None and config.dataset is not None:
        train, test = datasets.load(version).to_detection()
        pinned = config.dataset.model_copy(update={"version": version.version})
        config = config.model_copy(update={"dataset": pinned, "store": url})
        name, data_version, fraction = version.ref, version.ref, config.dataset.test_fraction
    elif isinstance(config.data, CanvasesData | CocoData):
        train, test = load_detection_data(config.data, seed=seed)
        name, data_version = config.data.name, None
    else:
        raise ConfigError("a detection job needs detection data: a canvases or coco [data]")
    if test is None or len(test) == 0:
        rows, held = held_out_rows(len(train), fraction, seed, name)
        train, test = train.subset(rows), train.subset(held)
    spec, task = detector_spec(
        config.model,
        train,
        name,
        score_threshold=None if config.task is None else config.task.score_threshold,
        max_detections=None if config.task is None else config.task.max_detections,
    )
    return TrainJob(
        config=config,
        spec=spec,
        x_train=train.x.to(torch.float32),
        y_train=train.y,
        x_test=test.x.to(torch.float32),
        y_test=test.y,
        data_name=name,
        data_version=data_version,
        task=task,
    )


def _check_resumable(start: Mapping[str, Any], job: TrainJob) -> None:
    if start.get("format") != 1:
        raise ConfigError("the checkpoint was written by an unknown version of fedge")
    if start["config"] != job.config_dict():
        changed = sorted(
            key
            for key in start["config"].keys() | job.config_dict().keys()
            if start["config"].get(key) != job.config_dict().get(key)
        )
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's in {', '.join(changed)} "
            f"(checkpoint data version {start.get('data_version')}); resume with the same config"
        )


def _spawned_worker(
    dist: Dist, job: TrainJob, folder: JobFolder, start: Mapping[str, Any] | None, progress: bool
) -> None:
    """What a spawned worker runs: rank 0 builds its own progress bar (rich objects do not
    travel between processes)."""
    from fedge.central.progress import RichProgress

    if progress and dist.is_main:
        with RichProgress(job.config.train.epochs, done=int(start["epoch"]) if start else 0) as bar:
            train_worker(dist, job, folder, start, [bar])
    else:
        train_worker(dist, job, folder, start)


def run_job(
    job: TrainJob,
    out: Path,
    *,
    workers: int = 1,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    observers: Sequence[TrainObserver] = (),
) -> TrainResult:
    """Run ``job`` on ``workers`` processes of this machine, results into ``out``.

    Parameters
    ----------
    job:
        The prepared job (:func:`prepare_job`).
    out:
        Output folder; the job runs in ``out.partial`` (see :mod:`~fedge.central.job_folder`).
    workers:
        1 (default) trains in this process; more spawn that many gloo workers.
    resume:
        Continue the interrupted job in ``out.partial`` from its last checkpoint (the
        config must be the same; the number of workers may differ).
    force:
        Replace a finished or interrupted job in ``out``.
    progress:
        Show a rich progress bar (rank 0).
    observers:
        Extra callbacks, for ``workers == 1`` only.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if observers and workers > 1:
        raise ConfigError("observers run in this process: use workers=1")
    folder = JobFolder(out)
    folder.open(resume=resume, force=force)
    try:
        start = None
        if resume:
            start = folder.load_checkpoint()
            _check_resumable(start, job)
        else:
            folder.write_config(job.config_dict())
        if workers == 1:
            threads = torch.get_num_threads()
            try:
                if progress:
                    from fedge.central.progress import RichProgress

                    done = int(start["epoch"]) if start else 0
                    with RichProgress(job.config.train.epochs, done=done) as bar:
                        train_worker(Dist(), job, folder, start, [bar, *observers])
                else:
                    train_worker(Dist(), job, folder, start, observers)
            finally:
                torch.set_num_threads(threads)
        else:
            launch(_spawned_worker, (job, folder, start, progress), workers)
    finally:
        folder.close()  # the workers have ended: no process of this job is left
    return load_result(out)


def run_env_job(
    job: TrainJob, out: Path, *, resume: bool = False, force: bool = False, progress: bool = False
) -> TrainResult | None:
    """Run ``job`` as one worker of the process group the environment describes
    (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``; see :mod:`fedge.central.ddp`).

    Rank 0 opens ``out`` and reads the checkpoint, and sends it to the others, so only its
    machine needs the folder. Returns the result on rank 0 and ``None`` elsewhere.
    """
    dist = init_from_env()
    folder = JobFolder(out)
    try:
        error, start = None, None
        if dist.is_main:
            try:
                folder.open(resume=resume, force=force)
                if resume:
                    start = folder.load_checkpoint()
                    _check_resumable(start, job)
                else:
                    folder.write_config(job.config_dict())
            except FedgeError as exc:
                error = exc
        error, start = dist.broadcast((error, start))
        if error is not None:
            raise error
        _spawned_worker(dist, job, folder, start, progress)
    finally:
        folder.close()
        if dist.world_size > 1:
            torch.distributed.destroy_process_group()
    return load_result(out) if dist.is_main else None


def load_result(out: Path) -> TrainResult:
    """Read a finished job's summary, weights and spec from its folder."""
    out = Path(out)
    try:
        summary = json.loads((out / "summary.json").read_text())
        params = params_from_bytes((out / "model.safetensors").read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{out} is not a finished training job: {exc}") from None
    return TrainResult(out=out, summary=summary, params=params, spec=load_spec(out / "model.json"))


def check_model_name(name: str, store_url: str) -> None:
    """Raise :class:`~fedge.errors.RegistryError` now, before training, if ``name`` cannot
    name a model or the store cannot be listed."""
    ModelRegistry(open_store(store_url)).version_numbers(name)


def register_job(result: TrainResult, job: TrainJob, name: str, store_url: str) -> ModelVersion:
    """Register the final model of a finished job as the next version of ``name``."""
    return publish_model(
        ModelRegistry(open_store(store_url)),
        name,
        result.spec,
        result.params,
        metrics=result.summary,
        data_version=job.data_version,
        config=job.config_dict(),
        source=str(result.out.resolve()),
        task=job.the_task.to_dict(),
    )
