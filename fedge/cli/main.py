"""The ``fedge`` command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedge.cli.common import FedgeGroup, SetOption, console, friendly
from fedge.cli.compare import compare
from fedge.cli.edge import edge_app
from fedge.cli.federation import client, server
from fedge.cli.models import models_app
from fedge.cli.serve import serve
from fedge.cli.tokens import tokens_app
from fedge.cli.train import data_upload, data_versions, train
from fedge.errors import ConfigError

app = typer.Typer(
    cls=FedgeGroup,
    help="fedge: federated and centralized training on edge data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and fetch datasets.", no_args_is_help=True)
privacy_app = typer.Typer(help="Differential privacy budgets.", no_args_is_help=True)
# FedgeGroup lists the commands in workflow order, whatever the order they are added in.
app.add_typer(data_app, name="data")
app.command("train")(train)
app.command("compare")(compare)
app.add_typer(models_app, name="models")
app.command("serve")(serve)
app.add_typer(tokens_app, name="tokens")
app.add_typer(edge_app, name="edge")
app.command("server")(server)
app.command("client")(client)
app.add_typer(privacy_app, name="privacy")


def package_version() -> str:
    """The installed distribution's version (``fedge.__version__`` when run from a tree
    that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:
        from fedge import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        console.print(f"fedge {package_version()}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


class _RichObserver:
    """Progress bars for rounds and for the clients of the current round."""

    def __init__(self, progress: Progress, rounds: int):
        self.progress = progress
        self.rounds = progress.add_task("rounds", total=rounds, status="")
        self.clients = progress.add_task("clients", total=1, status="")
        self.samples = 0
        self.t0 = time.perf_counter()

    def round_started(self, round: int, num_clients: int) -> None:
        self.progress.reset(self.clients, total=num_clients, status="")
        self.samples = 0
        self.t0 = time.perf_counter()

    def client_finished(self, update: Any) -> None:
        self.samples += update.metrics.get("examples", update.num_samples)
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.clients, advance=1, status=f"{rate:,.0f} examples/s")

    def round_finished(self, metrics: Mapping[str, Any]) -> None:
        acc, map50 = metrics.get("test_accuracy"), metrics.get("test_map50")
        status = f"acc {100 * acc:.2f}%" if acc is not None else ""
        if map50 is not None:
            status = f"mAP@.5 {100 * map50:.2f}%"
        self.progress.update(self.rounds, advance=1, status=status)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>7}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )


@app.command()
@friendly
def simulate(
    config: Annotated[Path, typer.Argument(help="Experiment file (TOML).")],
    overrides: SetOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/<name>-<time>).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    engine: Annotated[
        str | None,
        typer.Option(help="vectorized (default), sequential or ray; same as --set engine=..."),
    ] = None,
    max_memory: Annotated[
        int | None, typer.Option(help="MiB for one vectorized chunk (max_memory_mb).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (threads).")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join: auto, host:port, ray://host:port.")
    ] = None,
    ray_workers: Annotated[int | None, typer.Option(help="Ray worker actors.")] = None,
) -> None:
    """Run a federated simulation and write metrics, a summary, a plot and the model.

    The engine options are shortcuts for the config keys of the same name; they win over
    the file and over --set.
    """
    from fedge.config import load_config
    from fedge.sim.experiment import prepare, run_to_folder

    shortcuts = {
        "engine": engine,
        "max_memory_mb": max_memory,
        "threads": threads,
        "ray_address": ray_address,
        "ray_workers": ray_workers,
    }
    extra = [f"{key}={json.dumps(value)}" for key, value in shortcuts.items() if value is not None]
    cfg = load_config(config, [*(overrides or []), *extra])
    with console.status("loading data and partitioning", spinner="dots"):
        fed = prepare(cfg)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = out or Path("runs") / f"{cfg.name}-{stamp}"
    sizes = fed.clients.sizes()
    console.print(
        f"[bold]{cfg.name}[/]: {fed.data.name}, {fed.clients.num_clients} clients "
        f"({sizes.min()}-{sizes.max()} examples), {fed.cohort} per round, "
        f"{cfg.rounds} rounds, {fed.strategy.name}, model {fed.spec.name}, "
        f"engine {cfg.engine}"
    )
    if fed.privacy is not None:
        p = fed.privacy
        how = f"calibrated for ε = {p.target_epsilon:g}" if p.calibrated else "given"
        clip = "adaptive clipping" if p.adaptive else f"clipping norm {p.clip_norm:g}"
        kind = "distributed DP, client noise" if p.ledger.skellam else "DP-FedAvg"
        console.print(
            f"{kind}: noise multiplier {p.noise_multiplier:.4g} ({how}), {clip}, "
            f"δ = {p.ledger.delta:.3g}",
            soft_wrap=True,
        )
        if p.budget_stop:
            console.print(f"privacy budget: {p.budget_stop}", soft_wrap=True)
    with _progress() as progress:
        observer = None if quiet else _RichObserver(progress, fed.rounds)
        summary, path = run_to_folder(fed, out, observer=observer, overwrite=force)
    console.print(_accuracy_line(summary, path), soft_wrap=True)
    if "privacy" in summary:
        console.print(f"privacy: {summary['privacy']['guarantee']}", soft_wrap=True)
        if summary["privacy"]["budget_stop"]:
            console.print(f"stopped early: {summary['privacy']['budget_stop']}", soft_wrap=True)


def _accuracy_line(summary: Mapping[str, Any], path: Path) -> str:
    """The final test accuracy and the best round's (an earlier round may have done better);
    a detector's mAP@.5 and mAP@[.5:.95]."""
    if "final_test_map50" in summary:
        return (
            f"test mAP@.5 [bold]{100 * summary['final_test_map50']:.2f}%[/], mAP@[.5:.95] "
            f"{100 * summary['final_test_map']:.2f}% after {summary['rounds']} rounds, best "
            f"mAP@.5 {100 * summary['best_test_map50']:.2f}% in round {summary['best_round']} "
            f"({summary['seconds']:.1f} s); results in {escape(str(path))}/ "
            f"(plot: {escape(str(path / 'curves.png'))})"
        )
    return (
        f"test accuracy [bold]{100 * summary['final_test_accuracy']:.2f}%[/] after "
        f"{summary['rounds']} rounds, best {100 * summary['best_test_accuracy']:.2f}% in round "
        f"{summary['best_round']} ({summary['seconds']:.1f} s); results in {escape(str(path))}/ "
        f"(plot: {escape(str(path / 'curves.png'))})"
    )


@data_app.command("describe")
@friendly
def describe(
    config: Annotated[
        Path | None, typer.Argument(help="Experiment file whose [data]/[partition] to use.")
    ] = None,
    overrides: SetOption = None,
    plot: Annotated[Path | None, typer.Option(help="Save a per-client label plot (PNG).")] = None,
    max_rows: Annotated[int, typer.Option(help="Clients shown in the table.")] = 20,
) -> None:
    """Print per-client sample counts and label histograms of a partitioned dataset
    (detection data: each image's dominant class, the one its partition splits by).

    Example: fedge data describe --set data.name=digits --set partition.scheme=dirichlet
    --set partition.num_clients=10
    """
    from fedge.config import CanvasesData, CocoData, apply_overrides, parse_section, read_toml
    from fedge.data.describe import describe_partition, plot_partition, stats_table
    from fedge.data.load import (
        load_data,
        load_federated_detection,
        partition_data,
        partition_labels,
    )

    raw = apply_overrides(read_toml(config) if config is not None else {}, overrides or [])
    if "data" not in raw:
        raise ConfigError("no [data] section: pass an experiment file or --set data.name=...")
    data_cfg = parse_section("data", raw["data"])
    part_cfg = parse_section("partition", raw["partition"]) if "partition" in raw else None
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if isinstance(data_cfg, CanvasesData | CocoData):
        data = load_federated_detection(data_cfg, seed=seed)
    else:
        data = load_data(data_cfg, seed=seed)
    partition = partition_data(data, part_cfg, seed=seed)
    stats = describe_partition(partition, *partition_labels(data))
    console.print(stats_table(stats, max_rows=max_rows, client_ids=data.client_ids))
    if plot is not None:
        plot_partition(stats, plot, title=f"{data.name}: {len(partition)} clients")
        console.print(f"plot saved to {plot}")


@data_app.command("download")
@friendly
def download(
    dataset: Annotated[str, typer.Argument(help="Dataset to fetch: fashion-mnist.")],
    dest: Annotated[Path, typer.Option(help="Folder to download into.")] = Path(
        "data/fashion-mnist"
    ),
    base_url: Annotated[str | None, typer.Option(help="Mirror to download from.")] = None,
) -> None:
    """Download a dataset for machines without the Debian package."""
    from fedge.data.fashion_mnist import download_fashion_mnist

    if dataset.replace("_", "-") != "fashion-mnist":
        raise ConfigError(f"unknown dataset {dataset!r}: only fashion-mnist can be downloaded")
    kwargs = {} if base_url is None else {"base_url": base_url}
    path = download_fashion_mnist(dest, progress=sys.stderr.isatty(), **kwargs)
    console.print(f"Fashion-MNIST is in {path} (use --set data.data_dir={path})")


data_app.command("upload")(data_upload)
data_app.command("versions")(data_versions)


@privacy_app.command("plan")
@friendly
def privacy_plan(
    clients: Annotated[int, typer.Option(help="N, clients in the federation.")],
    per_round: Annotated[int, typer.Option(help="m, clients sampled per round.")],
    rounds: Annotated[int, typer.Option(help="T, rounds to train.")],
    epsilon: Annotated[float, typer.Option(help="ε to reach after T rounds.")],
    delta: Annotated[
        float | None, typer.Option(help="δ (default min(1e-5, N^-1.1)).", show_default=False)
    ] = None,
    dropout: Annotated[
        float, typer.Option(help="Secure aggregation: fraction of a cohort that may drop out.")
    ] = 0.3,
    corrupt: Annotated[
        float,
        typer.Option(
            help="Secure aggregation: fraction of clients that may collude with the server."
        ),
    ] = 0.05,
    params: Annotated[
        int | None,
        typer.Option(
            help="Distributed DP: the model's number of parameters (prints the Skellam "
            "noise the clients add).",
            show_default=False,
        ),
    ] = None,
    modulus_bits: Annotated[
        int, typer.Option(help="Distributed DP: secure aggregation's modulus 2^b.")
    ] = 32,
    clip_norm: Annotated[float, typer.Option(help="Distributed DP: the clipping norm S.")] = 1.0,
) -> None:
    """Print the noise multiplier DP-FedAvg needs for (ε, δ) after T rounds, the noise it
    puts on the averaged update, and the SecAgg+ graph degree k and threshold t for the
    cohort, before anyone trains. With --params, also the Skellam noise of distributed DP
    (privacy.dp = "distributed").

    Example: fedge privacy plan --clients 1000 --per-round 100 --rounds 100 --epsilon 8
    """
    from fedge.privacy.ledger import default_delta
    from fedge.privacy.plan import distributed_report, plan_report, secagg_report

    resolved = delta if delta is not None else default_delta(max(clients, 1))
    secagg = secagg_report(per_round, dropout, corrupt)  # refuses bad fractions at once
    for line in plan_report(clients, per_round, rounds, epsilon, resolved):
        console.print(line, soft_wrap=True, markup=False)
    console.print(secagg, soft_wrap=True, markup=False)
    if params is not None:
        lines = distributed_report(
            clients,
            per_round,
            rounds,
            epsilon,
            resolved,
            dimension=params,
            dropout=dropout,
            corrupt=corrupt,
            modulus_bits=modulus_bits,
            clip_norm=clip_norm,
        )
        for line in lines:
            console.print(line, soft_wrap=True, markup=False)


def main() -> None:  # pragma: no cover - console entry
    app()
