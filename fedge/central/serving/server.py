"""Run the inference server with uvicorn on a socket of our own, so that port 0 works:
the kernel picks a free port and the server says which before it starts serving."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from fedge.central.registry import ModelRegistry, check_alias
from fedge.central.serving.app import create_app
from fedge.central.serving.settings import ServeSettings
from fedge.central.serving.timeouts import protocol_with_header_timeout
from fedge.errors import ConfigError, FedgeError, ModelNotFound, ServingError

__all__ = ["bind_socket", "run_server"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port), ready for uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets that say so, and with Nagle on, a response sent as headers then body waits
    # for the client's delayed ACK, ~40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run_server(
    registry: ModelRegistry,
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = False,
    on_listen: Callable[[str], None] | None = None,
) -> None:
    """Serve ``registry`` on ``host:port`` until interrupted.

    The models of ``settings.models`` are checked before the socket opens (an unknown model
    or missing alias is an error here, not a server that never gets ready). ``on_listen``
    is called with the server's URL, port included, once the socket is bound.
    """
    check_alias(settings.alias)
    for value, what in (
        (settings.max_body_bytes, "max body bytes"),
        (settings.max_request_rows, "max request rows"),
        (settings.max_batch_rows, "max batch rows"),
        (settings.threads, "threads"),
    ):
        if value < 1:
            raise ConfigError(f"{what} must be at least 1, got {value}")
    if settings.max_delay_ms < 0 or settings.poll_seconds <= 0:
        raise ConfigError("max delay must be >= 0 and the poll interval > 0")
    if settings.body_timeout_seconds <= 0 or settings.header_timeout_seconds <= 0:
        raise ConfigError("the body and header timeouts must be positive")
    for name in settings.models:
        # A model that does not exist, or lacks the alias, is a mistake in the command; a
        # model whose files are corrupt is served as broken (503) while the rest run.
        try:
            registry.get(name, settings.alias)
        except ModelNotFound:
            raise
        except FedgeError:
            pass
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if on_listen is not None:
        on_listen(f"http://{shown}:{bound}")
    config = uvicorn.Config(
        create_app(registry, settings),
        http=protocol_with_header_timeout(settings.header_timeout_seconds),
        log_level="warning",
        access_log=access_log,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise ServingError("the server failed to start (the reason is logged above)")
