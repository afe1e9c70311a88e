"""``fedge train`` and ``fedge data upload|versions``: datasets in the store, training jobs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fedge.cli.common import SetOption, console, friendly
from fedge.cli.models import StoreOption
from fedge.errors import ConfigError

__all__ = ["data_upload", "data_versions", "train"]


def _datasets(store: str | None) -> Any:
    from fedge.central.datasets import DatasetStore
    from fedge.central.storage import DEFAULT_STORE, open_store

    return DatasetStore(open_store(store or DEFAULT_STORE))


def _source_arrays(
    source: Path | None, overrides: list[str], num_classes: int | None, seed: int | None
) -> tuple[Any, str]:
    """The arrays SOURCE names, and a description of it for the manifest."""
    import json

    from fedge.central.datasets import DatasetArrays, read_npz
    from fedge.config import DETECTION_DATA, apply_overrides, parse_section, read_toml
    from fedge.data.load import load_data, load_detection_data

    if source is not None and source.suffix == ".npz":
        if overrides:
            raise ConfigError("--set applies to a [data] section, not to an .npz file")
        return read_npz(source, num_classes=num_classes), f"samples {source.resolve()}"
    if source is not None and source.suffix != ".toml":
        raise ConfigError(
            f"SOURCE must be an .npz file of samples or a TOML file with a [data] section, "
            f"got {source}"
        )
    raw = apply_overrides(read_toml(source) if source is not None else {}, overrides)
    if "data" not in raw:
        raise ConfigError("no [data] section: pass a config file, an .npz or --set data.name=...")
    section = parse_section("data", raw["data"])
    seed = seed if seed is not None else raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    description = json.dumps(section.model_dump(mode="json", exclude_none=True))
    with console.status(f"loading {section.name}", spinner="dots"):
        if section.name in DETECTION_DATA:
            train, test = load_detection_data(section, seed=seed)
            return DatasetArrays.from_detection(train, test), f"data {description} seed {seed}"
        data = load_data(section, seed=seed)
    return DatasetArrays.from_data(data), f"data {description} seed {seed}"


@friendly
def data_upload(
    name: Annotated[str, typer.Argument(help="Dataset name in the store.")],
    source: Annotated[
        Path | None,
        typer.Argument(
            help="An .npz with arrays x, y (and optionally x_test, y_test), or a TOML file "
            "whose [data] section to load; omit it to give [data] with --set."
        ),
    ] = None,
    overrides: SetOption = None,
    append_to: Annotated[
        str | None,
        typer.Option(help="Make the new version this version (number or 'latest') + SOURCE."),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(help="Classes of an .npz dataset (default: largest label + 1)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of a [data] source's split.")] = None,
    store: StoreOption = None,
) -> None:
    """Put a dataset, or new samples from devices, into the store as a new version.

    Examples: fedge data upload fmnist --set data.name=fashion_mnist;
    fedge data upload fmnist new.npz --append-to latest
    """
    datasets = _datasets(store)
    if append_to is not None:
        parent = datasets.get(name, append_to)
        arrays, description = _source_arrays(source, overrides or [], parent.num_classes, seed)
        with console.status("appending", spinner="dots"):
            v = datasets.append(name, arrays, parent=parent.version, source=description)
    else:
        arrays, description = _source_arrays(source, overrides or [], num_classes, seed)
        with console.status("uploading", spinner="dots"):
            v = datasets.upload(name, arrays, source=description)
    grown = f", {v.appended:,} new samples on version {v.parent}" if v.parent else ""
    console.print(
        f"{v.ref}: {v.num_train:,} training and {v.num_test:,} test examples of shape "
        f"{v.input_shape} ({v.train.x_dtype}), {v.num_classes} classes"
        f"{' with boxes' if v.task == 'detection' else ''}{grown}; "
        f"{v.size / 2**20:.1f} MiB in {datasets.store.url}",
        soft_wrap=True,
        markup=False,
    )


@friendly
def data_versions(
    name: Annotated[
        str | None, typer.Argument(help="Dataset name (default: list the datasets).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
    store: StoreOption = None,
) -> None:
    """List the versions of a dataset in the store (or the datasets, without NAME)."""
    import json

    from rich import box
    from rich.table import Table

    datasets = _datasets(store)
    if name is None:
        names = datasets.list_datasets()
        if as_json:
            console.print_json(json.dumps(names))
        elif not names:
            console.print(f"no datasets in {datasets.store.url}", soft_wrap=True, markup=False)
        else:
            table = Table("dataset", "versions", "latest", title=datasets.store.url)
            for n in names:
                latest = datasets.get(n)
                table.add_row(n, str(len(datasets.version_numbers(n))), str(latest.version))
            console.print(table)
        return
    versions = datasets.versions(name)
    if as_json:
        console.print_json(json.dumps([v.model_dump(mode="json") for v in versions]))
        return
    table = Table(
        "version", "created (UTC)", "train", "test", "example", "classes", "parent",
        title=f"{name} in {datasets.store.url}", box=box.SIMPLE, padding=(0, 1),
    )  # fmt: skip
    table.columns[1].no_wrap = True
    for v in versions:
        parent = f"{v.parent} (+{v.appended:,})" if v.parent else ""
        table.add_row(
            str(v.version),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            f"{v.num_train:,}",
            f"{v.num_test:,}",
            "x".join(map(str, v.input_shape)) + f" {v.train.x_dtype}",
            str(v.num_classes) + (" (boxes)" if v.task == "detection" else ""),
            parent,
        )
    console.print(table)


def _accuracy_line(summary: Mapping[str, Any], out: Path) -> str:
    """The final test accuracy and the best epoch's (an earlier epoch may have done better),
    as ``fedge simulate`` reports rounds; a detector's mAP@.5 and mAP@[.5:.95]."""
    if "final_test_map50" in summary:
        return (
            f"test mAP@.5 [bold]{100 * summary['final_test_map50']:.2f}%[/], mAP@[.5:.95] "
            f"{100 * summary['final_test_map']:.2f}% after {summary['epochs']} epochs, best "
            f"mAP@.5 {100 * summary['best_test_map50']:.2f}% in epoch {summary['best_epoch']} "
            f"({summary['seconds_per_epoch']:.2f} s per epoch); results in {escape(str(out))}/"
        )
    return (
        f"test accuracy [bold]{100 * summary['final_test_accuracy']:.2f}%[/] after "
        f"{summary['epochs']} epochs, best {100 * summary['best_test_accuracy']:.2f}% in epoch "
        f"{summary['best_epoch']} ({summary['seconds_per_epoch']:.2f} s per epoch); results in "
        f"{escape(str(out))}/"
    )


@friendly
def train(
    config: Annotated[Path, typer.Argument(help="Training job file (TOML).")],
    overrides: SetOption = None,
    workers: Annotated[
        int,
        typer.Option(help="Data-parallel worker processes on this machine (gloo, CPU)."),
    ] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/<name>-<time>).")
    ] = None,
    register: Annotated[
        str | None, typer.Option(help="Register the final model under this name.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted job in --out from its checkpoint.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace a job in the output folder.")] = False,
    store: Annotated[
        str | None,
        typer.Option(
            help="Object store for [dataset] and --register (default: the config's `store`, "
            "then $FEDGE_STORE, then ./fedge-store).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a model on a dataset version (or a [data] section) and write metrics, a plot,
    checkpoints and the model; optionally register it.

    With --workers N, N processes train data-parallel on shards of each global batch.

    Across machines: one `fedge train` per worker, all with the same --out, and
    MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK set (or under torchrun --no-python).
    """
    from fedge.central.ddp import env_world
    from fedge.central.jobs import (
        check_model_name,
        job_store_url,
        prepare_job,
        register_job,
        run_env_job,
        run_job,
    )
    from fedge.central.train_config import load_train_config

    cfg = load_train_config(config, overrides or [])
    world = env_world()
    if world is not None and (workers != 1 or out is None):
        raise ConfigError(
            "in a distributed environment (WORLD_SIZE is set) every process is one worker: "
            "leave out --workers and give every process the same --out"
        )
    main = world is None or world[0] == 0
    url = job_store_url(cfg, store)
    if register is not None:
        check_model_name(register, url)
    with console.status("loading data", spinner="dots"):
        job = prepare_job(cfg, store=store)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = out or Path("runs") / f"{cfg.name}-{stamp}"
    t = job.config.train
    size = world[1] if world is not None else workers
    if main:
        console.print(
            f"[bold]{cfg.name}[/]: {job.data_version or job.data_name}, "
            f"{len(job.y_train):,} training examples, model {job.spec.name}, {t.epochs} epochs, "
            f"global batch {t.batch_size} on {size} worker{'s' if size > 1 else ''}, "
            f"peak lr {t.peak_lr:g}",
            soft_wrap=True,
        )
    try:
        if world is not None:
            result = run_env_job(job, out, resume=resume, force=force, progress=not quiet)
        else:
            result = run_job(
                job, out, workers=workers, resume=resume, force=force, progress=not quiet
            )
    except KeyboardInterrupt:
        if main:
            console.print(f"to continue from the last finished epoch: add --out {out} --resume")
        raise
    if result is None:
        return
    console.print(_accuracy_line(result.summary, result.out), soft_wrap=True)
    if register is not None:
        with console.status("exporting to ONNX and registering", spinner="dots"):
            v = register_job(result, job, register, url)
        console.print(
            f"registered {register} version {v.version} (data {v.data_version or '-'}) in {url}",
            soft_wrap=True,
            markup=False,
        )
