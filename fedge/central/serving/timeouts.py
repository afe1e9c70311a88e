"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn closes idle keep-alive connections, but a client that opens a connection and
sends half a request line, or headers one byte a minute, is held forever (the slowloris
attack: a few hundred such connections exhaust a server). This protocol gives every
request ``header_timeout`` seconds from its first byte (or from the connection, for the
first request) to complete its headers, then closes the connection and logs one line.
Bodies have their own deadline in the application (:func:`~fedge.central.serving.http.read_body`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["protocol_with_header_timeout"]

log = logging.getLogger("fedge.serve")


def protocol_with_header_timeout(
    header_timeout: float, logger: logging.Logger = log
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose headers take longer than
    ``header_timeout`` seconds (and saying so, once, on ``logger``)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                where = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                logger.info(
                    "closed %s: no complete request headers within %g s", where, header_timeout
                )
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
