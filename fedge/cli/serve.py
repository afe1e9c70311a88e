"""``fedge serve``: the inference server over the model registry."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from fedge.cli.common import console, friendly
from fedge.cli.models import StoreOption


@friendly
def serve(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to load before reporting ready (default: every model with the "
            "alias). Others load on their first request.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed).")] = 8000,
    alias: Annotated[str, typer.Option(help="Alias whose version is served.")] = "production",
    poll: Annotated[
        float, typer.Option(help="Seconds between re-reads of the aliases (hot swap).")
    ] = 2.0,
    max_batch_rows: Annotated[
        int, typer.Option(help="Most rows in one onnxruntime call (micro-batching).")
    ] = 64,
    max_delay_ms: Annotated[
        float, typer.Option(help="How long a request waits for others to batch with.")
    ] = 2.0,
    max_request_rows: Annotated[int, typer.Option(help="Most examples in one request.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 << 20,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    auth_reads: Annotated[
        bool,
        typer.Option(help="Require a token for reads too (inference, metadata, downloads)."),
    ] = False,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may take to arrive (then 408).")
    ] = 30.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a connection may take to send its headers.")
    ] = 10.0,
    store: StoreOption = None,
) -> None:
    """Serve registry models over HTTP: KServe v2 (/v2/models/NAME/infer), POST /predict,
    model downloads with ETags (/v2/models/NAME/download) and sample uploads.

    The version an alias points at is served; a newly promoted version is picked up
    within --poll seconds, without a restart. Sample uploads need a token (fedge tokens
    create); reads are open unless --auth-reads. A model that cannot be loaded is
    reported and retried while the others are served. API document at /openapi.json.
    """
    from fedge.central.registry import ModelRegistry
    from fedge.central.serving import ServeSettings, run_server
    from fedge.central.storage import DEFAULT_STORE, open_store

    registry = ModelRegistry(open_store(store or DEFAULT_STORE))
    settings = ServeSettings(
        alias=alias,
        models=tuple(models or ()),
        max_body_bytes=max_body_bytes,
        max_request_rows=max_request_rows,
        max_batch_rows=max_batch_rows,
        max_delay_ms=max_delay_ms,
        poll_seconds=poll,
        threads=threads,
        auth_reads=auth_reads,
        body_timeout_seconds=body_timeout,
        header_timeout_seconds=header_timeout,
    )

    def listening(url: str) -> None:
        console.print(f"fedge serve: listening on {url}", soft_wrap=True, markup=False)

    _log_to_stderr()
    run_server(registry, settings, host=host, port=port, access_log=access_log, on_listen=listening)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to the ``sys.stderr`` of the moment, as "fedge serve: ..."."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"fedge serve: {level}{record.getMessage()}"


def _log_to_stderr() -> None:
    """Show the server's own log (models loaded, hot swaps, warnings) on stderr, one line
    an event; stdout keeps the one line that says where it listens."""
    log = logging.getLogger("fedge.serve")
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.propagate = False
