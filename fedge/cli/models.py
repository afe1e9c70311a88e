"""``fedge models``: the model registry from the command line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from fedge.cli.common import console, friendly

models_app = typer.Typer(
    help="The model registry: versions, aliases, frozen ONNX bundles.", no_args_is_help=True
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="FEDGE_STORE",
        help="Object store: a folder, file:///path or s3://bucket/prefix "
        "(S3 endpoint from FEDGE_S3_ENDPOINT). Default ./fedge-store.",
        show_default=False,
    ),
]


def _registry(store: str | None) -> Any:
    from fedge.central.registry import ModelRegistry
    from fedge.central.storage import DEFAULT_STORE, open_store

    return ModelRegistry(open_store(store or DEFAULT_STORE))


def _short_metrics(metrics: Mapping[str, Any], limit: int = 3) -> str:
    """The first few numeric metrics, accuracies and losses before the rest."""
    numbers = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)]
    numbers.sort(key=lambda kv: 0 if "accuracy" in kv[0] else 1 if "loss" in kv[0] else 2)
    shown = numbers[:limit]
    return "\n".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)


def _when(version: Any) -> str:
    """Creation time in UTC, to the minute."""
    return version.created_at.strftime("%Y-%m-%d %H:%M")


@models_app.command("list")
@friendly
def models_list(store: StoreOption = None) -> None:
    """List the registered models: versions, newest version and aliases."""
    from rich.table import Table
    from rich.text import Text

    from fedge.errors import FedgeError

    registry = _registry(store)
    names = registry.list_models()
    if not names:
        console.print(f"no models in {registry.store.url}", soft_wrap=True, markup=False)
        return
    table = Table(
        "model", "versions", "latest", "created (UTC)", "aliases", title=registry.store.url
    )
    troubled = []
    for name in names:
        count = str(len(registry.version_numbers(name)))
        try:  # one corrupt record must not hide the other models
            latest = registry.get(name)
            aliases = registry.aliases(name)
            if registry.check_files(latest, hashes=False):
                troubled.append(name)
        except FedgeError as exc:
            troubled.append(name)
            table.add_row(name, count, "?", "", Text(f"unreadable: {exc}", style="red"))
            continue
        table.add_row(
            name,
            count,
            str(latest.version),
            _when(latest),
            ", ".join(f"{a} → {v}" for a, v in sorted(aliases.items())),
        )
    console.print(table)
    if troubled:
        console.print(
            f"{', '.join(troubled)}: corrupt records or missing files; "
            "`fedge models verify` checks every file",
            style="red",
            markup=False,
            soft_wrap=True,
        )


@models_app.command("keygen")
@friendly
def models_keygen(
    key: Annotated[Path, typer.Argument(help="Where to write the private key (PEM, mode 0600).")],
) -> None:
    """Make a publisher key pair: versions registered with FEDGE_SIGNING_KEY=KEY are
    signed, and devices given the printed public key (FEDGE_PUBLISHER_KEY) install only
    versions it signed."""
    from fedge.central.signing import create_key, public_key_text

    public = public_key_text(create_key(key).public_key())
    print(public)
    typer.echo(
        f"private key in {key}: keep it on the machine that registers models "
        "(export FEDGE_SIGNING_KEY); give devices the public key above",
        err=True,
    )


@models_app.command("verify")
@friendly
def models_verify(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to check (default: all).", show_default=False),
    ] = None,
    store: StoreOption = None,
) -> None:
    """Check every version of every model: manifests and aliases readable, every file
    present and matching its SHA-256. Exits non-zero if anything is wrong."""
    registry = _registry(store)
    bad = 0
    for name in names or registry.list_models():
        with console.status(f"verifying {name}", spinner="dots"):
            problems = registry.verify(name)
        if not problems:
            count = len(registry.version_numbers(name))
            console.print(f"{name}: {count} version{'s' if count != 1 else ''} ok", markup=False)
            continue
        bad += 1
        for problem in problems:
            prefix = f"{name} " if problem.startswith("v") else f"{name}: "
            console.print(f"{prefix}{problem}", style="red", markup=False, soft_wrap=True)
    if bad:
        console.print(f"{bad} model{'s' if bad != 1 else ''} with problems", markup=False)
        raise typer.Exit(1)


@models_app.command("show")
@friendly
def models_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None,
        typer.Argument(help="Version number, alias or 'latest' (default: list every version)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    store: StoreOption = None,
) -> None:
    """Show a model's versions, or one version's files, metrics, data version and config."""
    import json

    from rich import box
    from rich.table import Table
    from rich.text import Text

    registry = _registry(store)
    aliases = registry.aliases(name)
    if version is None:
        versions = registry.list_versions(name)
        if as_json:
            console.print_json(json.dumps([v.model_dump(mode="json") for v in versions]))
            return
        table = Table("version", "created (UTC)", "aliases", "data", title=name, box=box.SIMPLE)
        table.add_column("metrics", overflow="fold", min_width=26)
        for v in versions:
            tags = ", ".join(a for a, n in sorted(aliases.items()) if n == v.version)
            data, metrics = Text(v.data_version or ""), Text(_short_metrics(v.metrics))
            table.add_row(str(v.version), _when(v), tags, data, metrics)
        console.print(table)
        return
    v = registry.get(name, version)
    if as_json:
        console.print_json(v.model_dump_json())
        return
    spec = v.model_spec()
    tags = ", ".join(a for a, n in sorted(aliases.items()) if n == v.version) or "none"
    console.print(f"[bold]{v.name}[/] version {v.version}  (aliases: {tags})")
    console.print(f"created      {_when(v)} UTC")
    shape = list(spec.input_shape)
    console.print(
        f"model        {spec.name}, input {shape}, {len(spec.layers)} layers", markup=False
    )
    console.print(f"data version {v.data_version or '-'}", markup=False)
    console.print(f"source       {v.source or '-'}", soft_wrap=True, markup=False)
    console.print(f"config       {'recorded (--json shows it)' if v.config else '-'}")
    files = Table("file", "bytes", "check", "sha256", box=None)
    files.columns[3].overflow = "fold"
    problems = registry.check_files(v)
    for filename, ref in sorted(v.files.items()):
        state = Text(problems[filename], style="red") if filename in problems else Text("ok")
        files.add_row(filename, f"{ref.size:,}", state, ref.sha256)
    console.print(files)
    if v.metrics:
        console.print("metrics")
        for key, value in v.metrics.items():
            console.print(f"  {key}: {value}", highlight=False, markup=False)


@models_app.command("promote")
@friendly
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number (or an alias to copy).")],
    alias: Annotated[str, typer.Option(help="Alias to point at the version.")] = "production",
    store: StoreOption = None,
) -> None:
    """Point an alias (default 'production') at a version, moving it if it exists."""
    registry = _registry(store)
    before = registry.aliases(name).get(alias)
    v = registry.promote(name, version, alias)
    was = f" (was version {before})" if before is not None else ""
    console.print(f"{name}: {alias} → version {v.version}{was}")


@models_app.command("register")
@friendly
def models_register(
    name: Annotated[str, typer.Argument(help="Model name to add a version to.")],
    run_dir: Annotated[Path, typer.Argument(help="Output folder of `fedge simulate`.")],
    data_version: Annotated[
        str | None, typer.Option(help="Dataset version the model was trained on.")
    ] = None,
    promote: Annotated[
        str | None, typer.Option(help="Also point this alias at the new version.")
    ] = None,
    store: StoreOption = None,
) -> None:
    """Register the final model of a `fedge simulate` run as a new version.

    Exports it to ONNX, checks onnxruntime against PyTorch (to 1e-4), and stores ONNX,
    safetensors and spec with the run's summary (as metrics) and resolved config.
    """
    from fedge.central.publish import publish_run
    from fedge.central.registry import check_alias

    if promote is not None:
        check_alias(promote)
    registry = _registry(store)
    with console.status("exporting to ONNX and verifying", spinner="dots"):
        v = publish_run(registry, name, run_dir, data_version=data_version)
    console.print(
        f"registered {name} version {v.version} in {registry.store.url}",
        soft_wrap=True,
        markup=False,
    )
    if promote is not None:
        registry.promote(name, v.version, promote)
        console.print(f"{name}: {promote} → version {v.version}")
