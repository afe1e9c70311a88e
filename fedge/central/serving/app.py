"""The inference server: Open Inference Protocol (KServe v2) paths, a simple ``/predict``,
over-the-air model downloads and sample uploads, on Starlette.

Endpoints (``{name}`` is a registry model, served at the version its alias points at;
``/versions/{v}`` variants take a version number or alias instead):

==========================================  ==============================================
``GET /v2/health/live``, ``/v2/health/ready``  liveness; ready once the startup models load
``GET /v2``                                    server metadata
``GET /v2/models/{name}[/versions/{v}]``       model metadata: versions, inputs, outputs
``GET /v2/models/{name}/ready``                whether the model can be served
``POST /v2/models/{name}[/versions/{v}]/infer``  v2 JSON tensors in, v2 tensors out
``POST /predict``                               ``{"instances": [...]}`` → ``{"prediction":
                                               [...], "probabilities": [...], "model",
                                               "version"}`` (model: ``"model"`` in the body
                                               or ``?model=``; default the only one served)
``GET /v2/models/{name}[/versions/{v}]/download``  zip of model.onnx, model.json,
                                               version.json (``?format=onnx``: the ONNX
                                               file alone); ``ETag`` is model.onnx's SHA-256,
                                               ``If-None-Match`` answers 304
``POST /v2/models/{name}/samples``              labelled samples appended to the model's
                                               dataset as its next version
``GET /v2/models/{name}/stats``                 micro-batching counters of served versions
==========================================  ==============================================

Errors are JSON ``{"error": "..."}`` with a 4xx status for every client mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fedge.central.edge import softmax
from fedge.central.registry import ModelRegistry
from fedge.central.serving.http import Handler, etag_matches, json_error, read_body, rejecting
from fedge.central.serving.models import LoadedModel, ModelPool
from fedge.central.serving.payload import (
    outputs_for,
    parse_infer,
    parse_json,
    parse_predict,
    parse_samples,
)
from fedge.central.serving.samples import dataset_for, store_samples
from fedge.central.serving.settings import ServeSettings
from fedge.errors import RequestRejected

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger("fedge.serve")


def _aliased_models(registry: ModelRegistry, alias: str) -> tuple[str, ...]:
    return tuple(name for name in registry.list_models() if alias in registry.aliases(name))


async def _report_served(registry: ModelRegistry, pool: ModelPool, alias: str) -> None:
    """Log what the server loaded at start, or warn that it has nothing to serve."""
    served = pool.served
    if served:
        shown = ", ".join(f"{name} version {number}" for name, number in sorted(served.items()))
        log.info("ready, serving %s (alias %s)", shown, alias)
        return
    if not await asyncio.to_thread(registry.list_models):
        log.warning(
            "the registry in %s holds no models: nothing to serve until one is registered "
            "and promoted (fedge models register, fedge models promote)",
            registry.store.url,
        )
    else:
        log.warning(
            "no model has the alias %r: nothing to serve until a version is promoted "
            "(fedge models promote NAME VERSION)",
            alias,
        )


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> Starlette:
    """The server's ASGI application, serving ``registry``'s models."""
    settings = settings or ServeSettings()
    state: dict[str, Any] = {"ready": False, "in_flight": 0}

    def pool() -> ModelPool:
        return state["pool"]

    async def model_of(request: Request) -> LoadedModel:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if version is None:
            return await pool().current(name)
        return await pool().version(name, version)

    def version_headers(model: LoadedModel, batch_rows: int | None = None) -> dict[str, str]:
        headers = {"X-Model-Name": model.name, "X-Model-Version": str(model.number)}
        if batch_rows is not None:
            headers["X-Batch-Rows"] = str(batch_rows)
        return headers

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def server_metadata(request: Request) -> Response:
        from fedge import __version__

        return JSONResponse({"name": "fedge", "version": __version__, "extensions": []})

    async def metadata(request: Request) -> Response:
        model = await model_of(request)
        return JSONResponse(await pool().describe(model), headers=version_headers(model))

    async def model_ready(request: Request) -> Response:
        model = await model_of(request)
        return JSONResponse({"name": model.name, "version": str(model.number), "ready": True})

    # Inference handlers take the model after their last await before submitting: a hot
    # swap between the two would otherwise hand the request to a batcher already closed.
    async def infer(request: Request) -> Response:
        body = parse_json(await read_body(request, settings.max_body_bytes))
        model = await model_of(request)
        parsed = parse_infer(body, model.input_name, model.input_shape, settings.max_request_rows)
        result = await model.batcher.submit(parsed.x)
        answer: dict[str, Any] = {
            "model_name": model.name,
            "model_version": str(model.number),
            "outputs": outputs_for(result.output, parsed.outputs),
        }
        if parsed.id is not None:
            answer["id"] = parsed.id
        return JSONResponse(answer, headers=version_headers(model, result.batch_rows))

    async def predict(request: Request) -> Response:
        body = parse_json(await read_body(request, settings.max_body_bytes))
        name = body.get("model", request.query_params.get("model"))
        if name is None:
            served = sorted(pool().served)
            if len(served) != 1:
                raise RequestRejected(
                    'name the model: "model" in the body or ?model= (serving: '
                    f"{', '.join(served) or 'none yet'})"
                )
            name = served[0]
        if not isinstance(name, str):
            raise RequestRejected(f'"model" must be a string, got {type(name).__name__}')
        version = body.get("version", request.query_params.get("version"))
        if version is None:
            model = await pool().current(name)
        else:
            model = await pool().version(name, str(version))
        x = parse_predict(body, model.input_shape, settings.max_request_rows)
        result = await model.batcher.submit(x)
        answer = {
            "prediction": result.output.argmax(axis=1).tolist(),
            "probabilities": softmax(result.output).tolist(),
            "model": model.name,
            "version": model.number,
        }
        return JSONResponse(answer, headers=version_headers(model, result.batch_rows))

    async def download(request: Request) -> Response:
        model = await model_of(request)
        kind = request.query_params.get("format", "zip")
        if kind not in ("zip", "onnx"):
            raise RequestRejected(f"unknown format {kind!r}: use zip or onnx")
        headers = {**version_headers(model), "ETag": f'"{model.etag}"'}
        if etag_matches(request.headers.get("if-none-match"), model.etag):
            return Response(status_code=304, headers=headers)
        filename = f"{model.name}-v{model.number}.{kind}"
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        if kind == "onnx":
            return Response(model.onnx, media_type="application/octet-stream", headers=headers)
        return Response(model.bundle, media_type="application/zip", headers=headers)

    async def samples(request: Request) -> Response:
        model = await pool().current(request.path_params["name"])
        body = parse_json(await read_body(request, settings.max_body_bytes))
        x, y = parse_samples(body, model.input_shape, model.num_classes, settings.max_request_rows)
        dataset = dataset_for(model.name, model.version.data_version)
        version = await asyncio.to_thread(
            store_samples,
            registry.store,
            dataset,
            x,
            y,
            num_classes=model.num_classes,
            source=f"edge:{model.name}@{model.number}",
        )
        answer = {
            "dataset": version.name,
            "version": version.version,
            "ref": version.ref,
            "sha256": version.sha256,
            "samples": len(x),
            "total": version.num_train,
        }
        return JSONResponse(answer, status_code=201)

    async def stats(request: Request) -> Response:
        name = request.path_params["name"]
        await pool().current(name)
        versions = {
            str(m.number): vars(m.batcher.stats).copy() for m in pool().loaded() if m.name == name
        }
        return JSONResponse({"name": name, "served": pool().served[name], "versions": versions})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", str(exc))
        return json_error(f"{request.method} {request.url.path}: {detail}", status)

    async def server_error(request: Request, exc: Exception) -> Response:
        return json_error(f"internal error: {type(exc).__name__}: {exc}", 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        state["pool"] = ModelPool(
            registry,
            executor,
            alias=settings.alias,
            max_batch_rows=settings.max_batch_rows,
            max_delay=settings.max_delay_ms / 1000,
            threads=settings.threads,
            in_flight=lambda: state["in_flight"],
        )
        for name in settings.models:
            await pool().current(name)
        if not settings.models:
            # Found by listing, not asked for: one model that cannot be served (say, a
            # version without model.onnx) must not keep the others offline.
            for name in await asyncio.to_thread(_aliased_models, registry, settings.alias):
                try:
                    await pool().current(name)
                except RequestRejected as exc:
                    log.warning("not serving %s: %s", name, exc)
        await _report_served(registry, pool(), settings.alias)
        watcher = asyncio.get_running_loop().create_task(pool().watch(settings.poll_seconds))
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await pool().close()
            executor.shutdown(wait=True)

    def counted(handler: Handler) -> Handler:
        """Count the inference requests under way, for the batchers' early stop."""

        async def wrapped(request: Request) -> Response:
            state["in_flight"] += 1
            try:
                return await handler(request)
            finally:
                state["in_flight"] -= 1

        wrapped.__name__ = handler.__name__
        return wrapped

    def route(path: str, handler: Handler, method: str = "GET") -> Route:
        return Route(path, rejecting(handler), methods=[method])

    routes = [
        route("/v2/health/live", live),
        route("/v2/health/ready", ready),
        route("/v2", server_metadata),
        route("/predict", counted(predict), "POST"),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            route(base, metadata),
            route(f"{base}/ready", model_ready),
            route(f"{base}/infer", counted(infer), "POST"),
            route(f"{base}/download", download),
        ]
    routes += [
        route("/v2/models/{name}/samples", samples, "POST"),
        route("/v2/models/{name}/stats", stats),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
