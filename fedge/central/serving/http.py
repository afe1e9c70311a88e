"""HTTP plumbing of the server: JSON errors, request bodies under a size limit, ETags."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fedge.errors import RequestRejected

__all__ = ["Handler", "etag_matches", "json_error", "read_body", "rejecting"]

Handler = Callable[[Request], Awaitable[Response]]


def json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def rejecting(handler: Handler) -> Handler:
    """Answer a :class:`RequestRejected` raised by ``handler`` with its JSON error."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestRejected as exc:
            return json_error(str(exc), exc.status)

    wrapped.__name__ = handler.__name__
    return wrapped


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        size = int(declared) if re.fullmatch(r"[0-9]{1,18}", declared) else None
        if size is None:
            raise RequestRejected(f"invalid Content-Length {declared[:40]!r}")
        if size > limit:
            raise RequestRejected(f"request body of {size} bytes exceeds the limit of {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(f"request body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
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
