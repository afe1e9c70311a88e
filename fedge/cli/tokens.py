"""``fedge tokens``: API tokens for the inference server's write endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fedge.cli.common import console, friendly
from fedge.cli.models import StoreOption

tokens_app = typer.Typer(
    help="API tokens for `fedge serve`: sample uploads need one (reads too with "
    "--auth-reads). Stored hashed in the store; shown once.",
    no_args_is_help=True,
)


def _tokens(store: str | None) -> Any:
    from fedge.central.storage import DEFAULT_STORE, open_store
    from fedge.central.tokens import TokenStore

    return TokenStore(open_store(store or DEFAULT_STORE))


@tokens_app.command("create")
@friendly
def tokens_create(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="A model the token may write to (repeatable).", show_default=False
        ),
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="A dataset the token may add samples to (repeatable).",
            show_default=False,
        ),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Every model and dataset (an operator's token).")
    ] = False,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Reads only (for a server run with --auth-reads).")
    ] = False,
    note: Annotated[str, typer.Option(help="What the token is for, shown by list.")] = "",
    store: StoreOption = None,
) -> None:
    """Make a token; it is printed once, and only its hash is stored.

    Example: fedge tokens create --model digits --note "warehouse cameras"
    """
    from fedge.errors import ConfigError

    scope = [f"model:{m}" for m in model or []] + [f"dataset:{d}" for d in dataset or []]
    if all_models:
        scope.append("*")
    if not scope:
        raise ConfigError("say what the token is for: --model NAME, --dataset NAME or --all")
    token = _tokens(store).create(scope, access="read" if read_only else "write", note=note)
    print(token)
    typer.echo("keep it: it is shown only this once (fedge tokens revoke ID ends it)", err=True)


@tokens_app.command("list")
@friendly
def tokens_list(store: StoreOption = None) -> None:
    """List the tokens: id, access, scope, note, created, revoked."""
    from rich.table import Table

    records = _tokens(store).list()
    if not records:
        console.print("no tokens", markup=False)
        return
    table = Table("id", "access", "scope", "note", "created (UTC)", "revoked (UTC)")
    for r in records:
        revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else ""
        table.add_row(
            r.id, r.access, ", ".join(r.scope), r.note, r.created_at.strftime("%Y-%m-%d %H:%M"),
            revoked,
        )  # fmt: skip
    console.print(table)


@tokens_app.command("revoke")
@friendly
def tokens_revoke(
    token_id: Annotated[
        str, typer.Argument(metavar="ID", help="The token's id (fedge tokens list).")
    ],
    store: StoreOption = None,
) -> None:
    """Revoke a token: the server refuses it from its next request on."""
    record = _tokens(store).revoke(token_id)
    console.print(f"revoked token {record.id} ({', '.join(record.scope)})", markup=False)
