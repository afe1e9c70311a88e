"""``fedge compare``: centralized, data-parallel and federated training of one task, and a
report comparing them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedge.cli.common import SetOption, console, friendly

__all__ = ["compare"]


@friendly
def compare(
    config: Annotated[Path, typer.Argument(help="Comparison file (TOML).")],
    overrides: SetOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default runs/compare-<name>); run again to resume."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Object store of the dataset (default: the config's `store`, then "
            "$FEDGE_STORE, then ./fedge-store).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Start over: delete the arms already run in the folder.")
    ] = False,
    report_only: Annotated[
        bool, typer.Option(help="Only write the report from the arms finished so far.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train one task (dataset version, model, test set, budget) centralized, data-parallel
    and federated, as the file's arms say, and write report.md and report.html comparing
    test accuracy against wall time, epochs of compute and bytes communicated.

    An interrupted comparison resumes when run again with the same file and --out: finished
    arms are kept. Override an arm's setting with --set arms.NAME.key=value (or its index).
    """
    from fedge.compare.config import load_compare_config
    from fedge.compare.progress import RichCompareProgress
    from fedge.compare.report import write_report
    from fedge.compare.runner import run_comparison

    cfg = load_compare_config(config, overrides or [])
    out = out or Path("runs") / f"compare-{cfg.name}"
    if report_only:
        md, page = write_report(out)
        console.print(f"report: {escape(str(md))}, {escape(str(page))}", soft_wrap=True)
        return
    arms = cfg.expanded_arms()
    names = ", ".join(a.name for a in arms)
    model = cfg.model.preset or str(cfg.model.spec)
    console.print(
        f"[bold]{escape(cfg.name)}[/]: {len(arms)} arms ({escape(names)}), dataset "
        f"{escape(cfg.dataset.name)}, model {escape(model)}, {escape(cfg.budget.describe())}",
        soft_wrap=True,
    )
    try:
        if quiet:
            md, page = run_comparison(cfg, out, store=store, force=force)
        else:
            with RichCompareProgress(console) as progress:
                md, page = run_comparison(cfg, out, store=store, force=force, observer=progress)
    except KeyboardInterrupt:
        console.print(
            "to resume (finished arms are kept): run the same command with "
            f"--out {escape(str(out))}",
            soft_wrap=True,
        )
        raise
    console.print(f"report: {escape(str(md))} and {escape(str(page))}", soft_wrap=True)
