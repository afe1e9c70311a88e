"""The federation server over HTTP (FastAPI on uvicorn); the protocol is in
``docs/protocol.md`` and, generated from the code, at ``/openapi.json``.

==========================================  ================================================
``POST /v1/devices``                        enroll with the secret → device id and token
``POST /v1/checkin``                        a task, "wait N seconds", or "finished"
``GET /v1/models/{version}``                the model as safetensors; ``ETag``, 304
``POST /v1/rounds/{round}/updates``         upload an update (safetensors body,
                                            ``Idempotency-Key`` header)
``GET /v1/status``                          rounds, devices, history (JSON)
``GET /v1/events``                          the same as server-sent events, on change
``GET /``                                   the dashboard
``GET /client``                             the browser client (TensorFlow.js), and its
                                            scripts and wasm files at ``GET /client/{name}``
``GET /v1/health``                          liveness
==========================================  ================================================

Every refusal is JSON ``{"error": "..."}``: 400 malformed, 401 unknown device or wrong
token or secret, 404 unknown model version, 409 stale round or model
version or a second update, 413 body too large, 507 the server's disk is full (retry).
Request bodies are counted as they arrive and refused past their limit, whatever
``Content-Length`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import pathlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from fedge.central.serving.http import etag_matches
from fedge.central.serving.timeouts import protocol_with_header_timeout
from fedge.errors import ObjectNotFound, ProtocolError, RequestRejected, StorageError
from fedge.federation.protocol import (
    NAME_PATTERN,
    Enrollment,
    EnrollmentRequest,
    ErrorBody,
    Finished,
    Task,
    UploadReceipt,
    Wait,
)
from fedge.federation.server import FederationServer

__all__ = ["HEADER_TIMEOUT", "check_transport", "create_app", "run_federation_server"]

#: Seconds a connection may take to send a request's headers before it is closed
#: (``$FEDGE_HEADER_TIMEOUT``, default 10).
HEADER_TIMEOUT = float(os.environ.get("FEDGE_HEADER_TIMEOUT", "10"))

log = logging.getLogger("fedge.server")

_JSON_LIMIT = 64 << 10
_NUMBER = r"^[0-9]{1,9}$"
_MAX_HOLD = 30.0
_RECENT_DEVICES = 50
#: The browser client's files: its page and ES modules in ``web/`` of the source tree (or
#: ``$FEDGE_WEB_DIR``), TensorFlow.js and its WebAssembly backend from ``web/node_modules``
#: (``npm ci --prefix web``).
_SCRIPT = r"^[a-z][a-z_.]{0,40}\.js$"
_CLIENT_NAME = r"^[a-z][a-z0-9_.-]{0,60}$"
_TFJS = "tf.fesm.min.js"
_TFJS_PATH = ("node_modules", "@tensorflow", "tfjs", "dist", _TFJS)
_WASM_DIST = ("node_modules", "@tensorflow", "tfjs-backend-wasm", "dist")
_JS = "text/javascript; charset=utf-8"
#: Third-party files served under /client by name: (path in web/, media type).
_VENDOR = {
    _TFJS: (_TFJS_PATH, _JS),
    "tf-backend-wasm.es2017.min.js": ((*_WASM_DIST, "tf-backend-wasm.es2017.min.js"), _JS),
    **{
        name: ((*_WASM_DIST, name), "application/wasm")
        for name in (
            "tfjs-backend-wasm.wasm",
            "tfjs-backend-wasm-simd.wasm",
            "tfjs-backend-wasm-threaded-simd.wasm",
        )
    },
}
#: 'wasm-unsafe-eval' lets the page compile WebAssembly (the wasm backend), nothing else.
_CLIENT_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; connect-src 'self' data:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'"
)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit_for(path)`` bytes with 413, by its
    ``Content-Length`` before reading and by counting while reading (chunked bodies)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await _send_error(send, 400, f"invalid Content-Length {declared.decode()!r}")
                return
            if int(declared) > limit:
                await _send_error(
                    send, 413, f"request body of {int(declared)} bytes exceeds {limit}"
                )
                return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestRejected(f"request body exceeds the limit of {limit} bytes", 413)
            return message

        await self.app(scope, counted, send)


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request or invalid update",
        401: "unknown device, wrong token or wrong secret",
        409: "stale round or model version, round closed, or a second update",
        413: "body too large",
    }.items()
}


def create_app(server: FederationServer) -> FastAPI:
    """The ASGI application of ``server`` (wrapped in the body-size limit)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop().create_task(server.run_rounds())
        try:
            yield
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await server.wait_idle()

    from fedge import __version__

    app = FastAPI(
        title="fedge federation server",
        version=__version__,
        summary="Coordinates federated training rounds over Python and browser devices.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    def device_of(request: Request) -> str:
        return server.authenticate(request.headers.get("authorization"))

    def refuse(request: Request, status: int, message: str) -> JSONResponse:
        """A 4xx answer; refused uploads are also shown on the dashboard."""
        if request.url.path.startswith("/v1/rounds/"):
            server.reject(getattr(request.state, "device", None), status, message)
        return _error(status, message)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return refuse(request, exc.status, str(exc))

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return refuse(request, exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return refuse(request, 400, "; ".join(parts) or "invalid request")

    @app.exception_handler(StorageError)
    async def storage(request: Request, exc: StorageError) -> JSONResponse:
        log.error("storage failure on %s: %s", request.url.path, exc)
        return _error(507, "the server cannot store data right now", {"Retry-After": "30"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal server error")

    @app.get("/v1/health", tags=["server"])
    async def health() -> dict[str, bool]:
        """Liveness."""
        return {"live": True}

    @app.post("/v1/devices", status_code=201, tags=["devices"], responses=_ERRORS)
    async def enroll(body: EnrollmentRequest) -> Enrollment:
        """Enroll a device with the federation's secret; keep the token, it is shown once."""
        device_id, token = await server.enroll(body.secret, body.kind)
        return Enrollment(device_id=device_id, token=token)

    @app.post("/v1/checkin", tags=["rounds"], responses=_ERRORS)
    async def checkin(
        request: Request,
        response: Response,
        wait: Annotated[float, Query(ge=0, le=_MAX_HOLD)] = 0.0,
    ) -> Task | Wait | Finished:
        """Ask for work: a task for the open round, or when to ask again.

        ``wait`` (seconds, at most 30): rather than answer "wait", hold the request until
        the next round opens or that time has passed (a long poll)."""
        answer = await server.checkin(device_of(request), hold=wait)
        if isinstance(answer, Wait):
            response.headers["Retry-After"] = str(max(1, round(answer.retry_after)))
        if isinstance(answer, Task):  # without the extensions it does not use
            return JSONResponse(answer.to_wire())  # type: ignore[return-value]
        return answer

    @app.get(
        "/v1/models/{version}",
        tags=["rounds"],
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "safetensors"},
            304: {"description": "unchanged (If-None-Match)"},
            404: {"model": ErrorBody, "description": "no such version"},
            **_ERRORS,
        },
        response_class=Response,
    )
    async def model(request: Request, version: Annotated[str, Path(pattern=_NUMBER)]) -> Response:
        """A model version (weights and the strategy's task inputs) as safetensors."""
        device_of(request)
        number = int(version)
        if number == server.coordinator.state.rounds_completed:
            data, etag = server.model_bytes, server.model_etag
        else:
            try:
                data = (await asyncio.to_thread(server.store.read_version, number))[0]
            except ObjectNotFound:
                return _error(404, f"no model version {number}")
            etag = hashlib.sha256(data).hexdigest()
        headers = {
            "ETag": f'"{etag}"',
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Model-Version": str(number),
        }
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.post(
        "/v1/rounds/{round}/updates",
        tags=["rounds"],
        responses={200: {"model": UploadReceipt, "description": "a retry"}, **_ERRORS},
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload(
        request: Request,
        response: Response,
        round: Annotated[str, Path(pattern=_NUMBER)],
        idempotency_key: Annotated[str, Header(pattern=NAME_PATTERN)],
    ) -> UploadReceipt:
        """Upload the update of ``round`` (an ``fedge.update.v1`` safetensors file).

        201: stored durably; 200: this idempotency key's update was stored before."""
        device = device_of(request)
        request.state.device = device
        body = await request.body()
        status, receipt = await server.upload(device, int(round), idempotency_key, body)
        response.status_code = status
        return receipt

    @app.get("/v1/rounds/{round}/secagg", tags=["secure aggregation"], responses=_ERRORS)
    async def secagg_input(
        request: Request,
        round: Annotated[str, Path(pattern=_NUMBER)],
        wait: Annotated[float, Query(ge=0, le=_MAX_HOLD)] = 0.0,
    ) -> dict[str, Any]:
        """The device's input to the open stage of secure round ``round``: its neighbours'
        keys (``share``), the shares sealed to it (``masked``), the survivor and dropout
        lists (``confirm``), its neighbours' confirmations (``unmask``); or ``waiting``,
        ``excluded``, or ``stage: finished`` with the round's status. ``wait`` holds a
        "waiting" answer until the stage changes (a long poll, at most 30 s)."""
        device = device_of(request)
        return await server.secure_input(device, int(round), hold=wait)

    @app.post(
        "/v1/rounds/{round}/secagg/{stage}",
        tags=["secure aggregation"],
        status_code=201,
        responses={200: {"description": "a retry of the same message"}, **_ERRORS},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def secagg_post(
        request: Request,
        response: Response,
        round: Annotated[str, Path(pattern=_NUMBER)],
        stage: Annotated[str, Path(pattern="^(advertise|share|masked|confirm|unmask)$")],
    ) -> dict[str, Any]:
        """The device's message for ``stage`` (JSON; the masked vector as raw
        little-endian integers). 201: stored durably; 200: the same message before."""
        device = device_of(request)
        request.state.device = device
        body = await request.body()
        response.status_code = await server.secure_post(device, int(round), stage, body)
        return {"round": int(round), "stage": stage, "duplicate": response.status_code == 200}

    def full_status() -> dict[str, Any]:
        """The server's status with the most recently seen devices and their kind."""
        answer = server.status()
        seen = server.last_seen
        recent = sorted(server.devices.values(), key=lambda d: -seen.get(d.id, 0.0))
        # Whole seconds: the event stream sends the status only when it changes.
        answer["devices"]["recent"] = [
            {"id": d.id, "kind": d.kind, "last_seen": round(seen[d.id]) if d.id in seen else None}
            for d in recent[:_RECENT_DEVICES]
        ]
        return answer

    @app.get("/v1/status", tags=["dashboard"])
    async def status() -> dict[str, Any]:
        """The state of the federation: round, devices (counts by kind, and the most
        recently seen devices with their kind: ``python`` or ``browser``), history, recent
        refusals."""
        return full_status()

    @app.get(
        "/v1/events",
        tags=["dashboard"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(request: Request) -> StreamingResponse:
        """:func:`status` as server-sent events, sent when it changes."""

        async def stream() -> AsyncIterator[str]:
            last = None
            quiet = 0.0
            while not server.stopping and not await request.is_disconnected():
                text = json.dumps(full_status())
                if text != last or quiet >= 15:
                    yield f"data: {text}\n\n" if text != last else ": keep-alive\n\n"
                    last, quiet = text, 0.0
                await asyncio.sleep(0.5)
                quiet += 0.5

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    page = resources.files("fedge.federation").joinpath("dashboard.html").read_text()

    @app.get("/", response_class=HTMLResponse, tags=["dashboard"])
    async def dashboard() -> HTMLResponse:
        """The dashboard (live, from /v1/events)."""
        return HTMLResponse(page)

    @app.get(
        "/client",
        response_class=HTMLResponse,
        tags=["browser client"],
        responses={503: {"model": ErrorBody, "description": "the browser client is not installed"}},
    )
    def browser_client(request: Request) -> Response:
        """The browser client: a page that enrolls, trains with TensorFlow.js on the
        device's own examples and uploads its updates (see ``web/``)."""
        return _web_file(request, "client.html", "text/html; charset=utf-8")

    @app.get(
        "/client/{name}",
        tags=["browser client"],
        response_class=Response,
        responses={
            200: {
                "content": {"text/javascript": {}, "application/wasm": {}},
                "description": "an ES module, or a WebAssembly binary",
            },
            304: {"description": "unchanged (If-None-Match)"},
            404: {"model": ErrorBody, "description": "no such script"},
            503: {"model": ErrorBody, "description": "the browser client is not installed"},
        },
    )
    def browser_client_script(
        request: Request, name: Annotated[str, Path(pattern=_CLIENT_NAME)]
    ) -> Response:
        """The browser client's ES modules; TensorFlow.js as ``tf.fesm.min.js``; its
        WebAssembly backend as ``tf-backend-wasm.es2017.min.js`` and its ``.wasm`` files."""
        if name in _VENDOR:
            parts, media_type = _VENDOR[name]
            return _web_file(request, str(pathlib.Path(*parts)), media_type)
        if not re.fullmatch(_SCRIPT, name):
            return _error(404, f"no browser client file {name}")
        return _web_file(request, str(pathlib.Path("src", name)), _JS)

    def limit_for(path: str) -> int:
        return server.max_upload_bytes if path.startswith("/v1/rounds/") else _JSON_LIMIT

    app.add_middleware(BodyLimit, limit_for=limit_for)
    return app


def _web_dir() -> pathlib.Path:
    """The browser client's folder: ``$FEDGE_WEB_DIR``, else ``web/`` beside the package
    in a source checkout (an editable install)."""
    configured = os.environ.get("FEDGE_WEB_DIR")
    if configured:
        return pathlib.Path(configured)
    return pathlib.Path(__file__).resolve().parents[2] / "web"


def _web_file(request: Request, relative: str, media_type: str) -> Response:
    """A file of the browser client, revalidated by ETag on every load (``no-cache``);
    503 if the client or TensorFlow.js is not installed, 404 for an unknown script."""
    root = _web_dir()
    if not (root / "client.html").is_file() or not root.joinpath(*_TFJS_PATH).is_file():
        log.warning("no browser client in %s: run `npm ci --prefix web`", root)
        return _error(
            503,
            "the browser client is not installed on this server: run `npm ci --prefix web` "
            "in fedge's source folder (or point $FEDGE_WEB_DIR at a web folder where it ran)",
        )
    path = root / relative
    if not path.is_file():
        return _error(404, f"no browser client file {pathlib.PurePath(relative).name}")
    stat = path.stat()
    etag = hashlib.sha256(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if relative == "client.html":
        headers["Content-Security-Policy"] = _CLIENT_CSP
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(path.read_bytes(), media_type=media_type, headers=headers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    """uvicorn's server, telling the federation when it starts shutting down so that
    open event streams end instead of holding the shutdown up."""

    federation: FederationServer

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.federation.stopping = True
        super().handle_exit(sig, frame)


def check_transport(
    host: str, tls_cert: str | None, tls_key: str | None, *, allow_http: bool
) -> None:
    """Refuse a listening setup that would send tokens and models in clear over a
    network, or TLS files that are missing (before anything slow starts)."""
    from fedge.errors import ConfigError

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    if tls_cert is None and not allow_http and not _is_loopback(host):
        raise ConfigError(
            f"refusing plain HTTP on {host}: give --tls-cert and --tls-key, or --allow-http "
            "if a proxy in front terminates TLS"
        )
    for path in (tls_cert, tls_key):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"TLS file not found: {path}")


def run_federation_server(
    server: FederationServer,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allow_http: bool = False,
    access_log: bool = False,
    on_listen: Callable[[str], None] | None = None,
) -> None:
    """Serve ``server`` on ``host:port`` until interrupted.

    With ``tls_cert`` and ``tls_key`` (PEM files) it speaks HTTPS. Plain HTTP is refused
    on an address other than loopback unless ``allow_http`` (tokens and models would
    cross the network in clear).
    """
    from fedge.central.serving.server import bind_socket
    from fedge.errors import ServingError

    check_transport(host, tls_cert, tls_key, allow_http=allow_http)
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls_cert else "http"
    config = uvicorn.Config(
        create_app(server),
        # A connection that never finishes its headers is closed (slowloris); bodies are
        # not timed here, as phones on slow links legitimately take long to upload.
        http=protocol_with_header_timeout(HEADER_TIMEOUT, log),
        log_level="warning",
        access_log=access_log,
        lifespan="on",
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        timeout_graceful_shutdown=5,
    )
    if on_listen is not None:
        on_listen(f"{scheme}://{shown}:{bound}")
    runner = _Server(config)
    runner.federation = server
    runner.run(sockets=[sock])
    if not runner.started:
        raise ServingError("the server failed to start (the reason is logged above)")
