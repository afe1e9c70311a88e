"""What every CLI command shares: consoles and the one-line error handling."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fedge.errors import FedgeError

__all__ = ["FedgeGroup", "SetOption", "console", "err_console", "friendly", "plain_help"]

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn a FedgeError into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FedgeError as exc:
            message = escape(str(exc))
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: key.sub=value (repeatable)."),
]


def plain_help(text: str | None) -> str | None:
    """Help text as typer should render it: the lines of each paragraph joined into one
    (typer keeps single line breaks, so a docstring's wrapping would show as hard breaks;
    paragraphs that start with ``\\b`` keep theirs), and rich markup escaped, so that
    ``[data]`` is printed as written instead of being taken for a style."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    joined = [p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs]
    return escape("\n\n".join(joined))


def _tidy_help(command: click.Command) -> None:
    """:func:`plain_help` for ``command`` and its parameters, and no type (typer shows
    ``<bool>``) beside a flag such as ``--help``; then the same for its subcommands."""
    command.help = plain_help(command.help)
    # The help option is made on first use and kept: make it now, to tidy it too.
    help_option = command.get_help_option(click.Context(command))
    for param in [*command.params, *([help_option] if help_option else [])]:
        if getattr(param, "help", None):
            param.help = plain_help(param.help)  # type: ignore[attr-defined]
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():  # a TyperGroup is no click.Group
        _tidy_help(sub)


class FedgeGroup(TyperGroup):
    """The ``fedge`` command: subcommands listed in workflow order (typer lists commands
    before groups, in the order they were added), and help text without hard line breaks,
    markup or ``<bool>`` in every subcommand (see :func:`_tidy_help`)."""

    order: ClassVar[tuple[str, ...]] = (
        "simulate",
        "data",
        "train",
        "compare",
        "models",
        "serve",
        "tokens",
        "edge",
        "server",
        "client",
        "privacy",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))
