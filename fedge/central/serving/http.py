"""HTTP plumbing of the server: JSON errors, request bodies under a size limit, ETags."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from fedge.errors import RequestRejected

__all__ = ["Handler", "etag_matches", "json_error", "read_body"]

Handler = Callable[[Request], Awaitable[Response]]


def json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes, and with
    408 if it has not all arrived ``timeout`` seconds after the handler asked for it (a
    client that sends half a body and stalls must not hold a connection and a task
    forever). A client that goes away while sending is a 499, logged as one line."""
    declared = request.headers.get("content-length")
    if declared is not None:
        size = int(declared) if re.fullmatch(r"[0-9]{1,18}", declared) else None
        if size is None:
            raise RequestRejected(f"invalid Content-Length {declared[:40]!r}")
        if size > limit:
            raise RequestRejected(f"request body of {size} bytes exceeds the limit of {limit}", 413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestRejected(f"request body exceeds the limit of {limit} bytes", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestRejected(
            f"the request body did not arrive within {timeout:g} s ({size} bytes came)", 408
        ) from None
    except ClientDisconnect:
        raise RequestRejected("the client went away while sending its request", 499) from None
    return b"".join(chunks)


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, or ``*``)."""
    if header is None:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip().removeprefix("W/").strip('"')
        if candidate in ("*", etag):
            return True
    return False
