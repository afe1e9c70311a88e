"""The inference server: Open Inference Protocol (KServe v2) paths, a simple ``/predict``,
over-the-air model downloads and sample uploads, on FastAPI; the OpenAPI document of
every route is at ``/openapi.json``.

Endpoints (``{name}`` is a registry model, served at the version its alias points at;
``/versions/{v}`` variants take a version number or alias instead):

==========================================  ==============================================
``GET /v2/health/live``, ``/v2/health/ready``  liveness; ready once the startup models load
``GET /v2``                                    server metadata
``GET /v2/models/{name}[/versions/{v}]``       model metadata: versions, inputs, outputs
``GET /v2/models/{name}/ready``                whether the model can be served (and why not)
``POST /v2/models/{name}[/versions/{v}]/infer``  v2 JSON tensors in, v2 tensors out
``POST /predict``                               ``{"instances": [...]}`` → ``{"prediction":
                                               [...], "probabilities": [...], "model",
                                               "version"}`` (model: ``"model"`` in the body
                                               or ``?model=``; default the only one served);
                                               a detector answers ``{"prediction": [[[class,
                                               score, xmin, ymin, xmax, ymax], ...], ...]}``,
                                               corners in [0, 1], with ``score_threshold``
                                               and ``max_detections`` from the body or query;
                                               or the body is one PNG or JPEG image
                                               (``Content-Type: image/png`` or
                                               ``image/jpeg``) of the model's size, read as
                                               training images are (pixels / 255)
``GET /v2/models/{name}[/versions/{v}]/download``  zip of model.onnx, model.json,
                                               version.json (``?format=onnx``: the ONNX
                                               file alone); ``ETag`` is model.onnx's SHA-256,
                                               ``If-None-Match`` answers 304
``POST /v2/models/{name}/samples``              labelled samples appended to the model's
                                               dataset as its next version (needs a token)
``GET /v2/models/{name}/stats``                 micro-batching counters of served versions
``GET /openapi.json``                           this API as an OpenAPI 3.1 document
==========================================  ==============================================

**Credentials.** Writes (sample uploads) need ``Authorization: Bearer <token>`` with a
token made by ``fedge tokens create`` whose scope covers the model or its dataset: 401
without a valid token, 403 outside its scope. Reads are open unless the server runs with
``auth_reads`` (then every model route needs a token covering the model; health checks
and the OpenAPI document stay open).

Errors are JSON ``{"error": "..."}``: 4xx for every client mistake, 503 for a model that
cannot be loaded (with the reason) or a store that cannot be reached. A 500 means a bug;
its body says only "internal server error", and the log has the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from fedge.central.edge import softmax
from fedge.central.registry import ModelRegistry
from fedge.central.serving.http import etag_matches, json_error, read_body
from fedge.central.serving.models import LoadedModel, ModelPool
from fedge.central.serving.payload import (
    DETECTION_OUTPUTS,
    IMAGE_TYPES,
    OUTPUTS,
    Body,
    detection_options,
    detection_outputs_for,
    outputs_for,
    parse_image,
    parse_infer,
    parse_json,
    parse_predict,
    parse_samples,
)
from fedge.central.serving.samples import dataset_for, store_samples
from fedge.central.serving.schemas import (
    ErrorBody,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    PredictRequest,
    PredictResponse,
    SamplesRequest,
    SamplesResponse,
    ServerMetadata,
)
from fedge.central.serving.settings import ServeSettings
from fedge.central.tokens import Access, ApiToken, TokenStore
from fedge.errors import FedgeError, RegistryError, RequestRejected, StorageError
from fedge.tasks.responses import detection_response

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger("fedge.serve")

_SCHEMAS: tuple[type[BaseModel], ...] = (
    ErrorBody, InferRequest, InferResponse, ModelMetadata, ModelReady, PredictRequest,
    PredictResponse, SamplesRequest, SamplesResponse, ServerMetadata,
)  # fmt: skip


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body the handler parses itself."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}}
    }


def _predict_body() -> dict[str, Any]:
    """``/predict`` takes JSON instances, or one image file."""
    extra = _json_body(PredictRequest)
    image = {"schema": {"type": "string", "format": "binary"}}
    extra["requestBody"]["content"].update({media: image for media in IMAGE_TYPES})
    return extra


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "malformed request: not JSON, wrong shape, NaN or infinity, bad labels",
        401: "no token, or a wrong or revoked one",
        403: "the token does not cover this model or dataset",
        404: "unknown model or version",
        408: "the request body did not arrive in time",
        409: "the samples do not fit the dataset",
        413: "body or row count over the limit",
        503: "the model cannot be loaded (the reason is given), or the store is unreachable",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


Name = Annotated[str, Path(description="a registry model name")]
Version = Annotated[str, Path(description="a version number or an alias")]
Format = Annotated[str, Query(alias="format", description="zip (default) or onnx")]


def _aliased_models(registry: ModelRegistry, alias: str) -> tuple[str, ...]:
    """Models that have ``alias``, and those whose aliases cannot be read (to be tried and
    reported as broken rather than silently skipped)."""
    found = []
    for name in registry.list_models():
        try:
            if alias in registry.aliases(name):
                found.append(name)
        except FedgeError:
            found.append(name)
    return tuple(found)


async def _report_served(registry: ModelRegistry, pool: ModelPool, alias: str) -> None:
    """Log what the server loaded at start, or warn that it has nothing to serve."""
    served = pool.served
    if served:
        shown = ", ".join(f"{name} version {number}" for name, number in sorted(served.items()))
        log.info("ready, serving %s (alias %s)", shown, alias)
    for name, reason in sorted(pool.broken.items()):
        log.warning("%s cannot be served, retrying every poll: %s", name, reason)
    if served or pool.broken:
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


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The server's ASGI application, serving ``registry``'s models."""
    settings = settings or ServeSettings()
    state: dict[str, Any] = {"ready": False, "in_flight": 0}
    tokens = TokenStore(registry.store)

    def pool() -> ModelPool:
        return state["pool"]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
        # One model that cannot be served (a corrupt manifest, a missing blob, a version
        # without model.onnx) must not keep the others offline: each is tried on its own.
        names = settings.models or await asyncio.to_thread(
            _aliased_models, registry, settings.alias
        )
        for name in names:
            try:
                await pool().current(name)
            except RequestRejected as exc:
                if exc.status != 503:  # broken ones are reported below, with the others
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

    from fedge import __version__

    app = FastAPI(
        title="fedge inference server",
        version=__version__,
        summary="Serves registry models: KServe v2 inference, /predict, over-the-air "
        "downloads and sample uploads from devices.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    # --- errors -------------------------------------------------------------------------

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, exc: RequestRejected) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 499:
            log.info("client went away during %s %s", request.method, request.url.path)
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return json_error("; ".join(parts) or "invalid request", 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return json_error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)

    @app.exception_handler(StorageError)
    async def storage(request: Request, exc: StorageError) -> Response:
        log.error("storage failure on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"error": "the model store cannot be reached right now; retry later"},
            status_code=503,
            headers={"Retry-After": "30"},
        )

    @app.exception_handler(RegistryError)
    async def registry_error(request: Request, exc: RegistryError) -> Response:
        log.error("registry failure on %s %s: %s", request.method, request.url.path, exc)
        return json_error("the model registry holds a corrupt record; see the server log", 503)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return json_error("internal server error", 500)

    # --- credentials --------------------------------------------------------------------

    async def credential(request: Request, access: Access) -> ApiToken:
        """The valid, unrevoked token the request carries, else a 401."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestRejected(
                f"{'writing' if access == 'write' else 'reading'} needs a token: "
                "'Authorization: Bearer <token>' (fedge tokens create)",
                401,
            )
        record = await asyncio.to_thread(tokens.verify, token.strip())
        if record is None:
            raise RequestRejected("the token is wrong or revoked", 401)
        return record

    def permit(record: ApiToken, access: Access, model: str, dataset: str | None = None) -> None:
        """A 403 unless ``record`` allows ``access`` on ``model`` (or its ``dataset``)."""
        if not record.allows(access, model=model, dataset=dataset):
            what = f"model {model!r}" + (f" or dataset {dataset!r}" if dataset else "")
            raise RequestRejected(
                f"token {record.id} ({record.access}, scope {', '.join(record.scope)}) does "
                f"not allow {access} on {what}",
                403,
            )

    async def readable(request: Request, name: str) -> None:
        if settings.auth_reads:
            permit(await credential(request, "read"), "read", name)

    async def model_of(request: Request, name: str, version: str | None = None) -> LoadedModel:
        await readable(request, name)
        if version is None:
            return await pool().current(name)
        return await pool().version(name, version)

    def version_headers(model: LoadedModel, batch_rows: int | None = None) -> dict[str, str]:
        headers = {"X-Model-Name": model.name, "X-Model-Version": str(model.number)}
        if batch_rows is not None:
            headers["X-Batch-Rows"] = str(batch_rows)
        return headers

    async def body_of(request: Request) -> Any:
        return parse_json(
            await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
        )

    # --- routes -------------------------------------------------------------------------

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        """Liveness: the process answers."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], responses={503: {"model": dict[str, bool]}})
    async def ready() -> Response:
        """Readiness: the startup models are loaded (or reported broken)."""
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2", tags=["health"], response_model=ServerMetadata)
    async def server_metadata() -> dict[str, Any]:
        """Server metadata (Open Inference Protocol)."""
        return {"name": "fedge", "version": __version__, "extensions": []}

    async def metadata(request: Request, name: str, version: str | None) -> Response:
        model = await model_of(request, name, version)
        return JSONResponse(await pool().describe(model), headers=version_headers(model))

    async def model_ready(request: Request, name: str, version: str | None) -> Response:
        await readable(request, name)
        try:
            model = await (
                pool().current(name) if version is None else pool().version(name, version)
            )
        except RequestRejected as exc:
            if exc.status != 503:
                raise
            reason = pool().broken.get(name) or str(exc)
            body = {"name": name, "ready": False, "reason": reason, "error": str(exc)}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"name": model.name, "version": str(model.number), "ready": True})

    # Inference handlers take the model after their last await before submitting: a hot
    # swap between the two would otherwise hand the request to a batcher already closed.
    async def infer(request: Request, name: str, version: str | None) -> Response:
        state["in_flight"] += 1
        try:
            body = await body_of(request)
            model = await model_of(request, name, version)
            parsed = parse_infer(
                body,
                model.input_name,
                model.input_shape,
                settings.max_request_rows,
                DETECTION_OUTPUTS if model.is_detector else OUTPUTS,
            )
            options = detection_options([parsed.parameters], detection=model.is_detector)
            result = await model.batcher.submit(parsed.x)
        finally:
            state["in_flight"] -= 1
        if model.is_detector:
            outputs = detection_outputs_for(
                result.output, parsed.outputs, **model.decoding(**options)
            )
        else:
            outputs = outputs_for(result.output, parsed.outputs)
        answer: dict[str, Any] = {
            "model_name": model.name,
            "model_version": str(model.number),
            "outputs": outputs,
        }
        if parsed.id is not None:
            answer["id"] = parsed.id
        return JSONResponse(answer, headers=version_headers(model, result.batch_rows))

    async def download(request: Request, name: str, version: str | None, kind: str) -> Response:
        model = await model_of(request, name, version)
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

    downloads = {
        200: {
            "description": "the model: a zip, or model.onnx alone",
            "content": {"application/zip": {}, "application/octet-stream": {}},
        },
        304: {"description": "If-None-Match names the current ETag"},
    }

    @app.get(
        "/v2/models/{name}", tags=["models"], response_model=ModelMetadata,
        responses=_errors(401, 403, 404, 503),
    )  # fmt: skip
    async def model_metadata(request: Request, name: Name) -> Response:
        """Model metadata: served version, all versions, aliases, input and outputs."""
        return await metadata(request, name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}", tags=["models"], response_model=ModelMetadata,
        responses=_errors(401, 403, 404, 503),
    )  # fmt: skip
    async def version_metadata(request: Request, name: Name, version: Version) -> Response:
        """Metadata of one version (a number or an alias)."""
        return await metadata(request, name, version)

    @app.get(
        "/v2/models/{name}/ready", tags=["models"], response_model=ModelReady,
        responses={503: {"model": ModelReady, "description": "the model cannot be loaded"},
                   **_errors(401, 403, 404)},
    )  # fmt: skip
    async def ready_model(request: Request, name: Name) -> Response:
        """Whether the model can be served; if not, why (503)."""
        return await model_ready(request, name, None)

    @app.get(
        "/v2/models/{name}/versions/{version}/ready", tags=["models"], response_model=ModelReady,
        responses={503: {"model": ModelReady, "description": "the version cannot be loaded"},
                   **_errors(401, 403, 404)},
    )  # fmt: skip
    async def ready_version(request: Request, name: Name, version: Version) -> Response:
        """Whether one version can be served."""
        return await model_ready(request, name, version)

    @app.post(
        "/v2/models/{name}/infer", tags=["inference"], response_model=InferResponse,
        responses=_errors(400, 401, 403, 404, 408, 413, 503),
        openapi_extra=_json_body(InferRequest),
    )  # fmt: skip
    async def infer_model(request: Request, name: Name) -> Response:
        """Open Inference Protocol inference on the served version."""
        return await infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer", tags=["inference"],
        response_model=InferResponse, responses=_errors(400, 401, 403, 404, 408, 413, 503),
        openapi_extra=_json_body(InferRequest),
    )  # fmt: skip
    async def infer_version(request: Request, name: Name, version: Version) -> Response:
        """Open Inference Protocol inference on one version."""
        return await infer(request, name, version)

    @app.post(
        "/predict", tags=["inference"], response_model=PredictResponse,
        responses=_errors(400, 401, 403, 404, 408, 413, 503),
        openapi_extra=_predict_body(),
    )  # fmt: skip
    async def predict(
        request: Request,
        model_query: Annotated[str | None, Query(alias="model")] = None,
        version_query: Annotated[str | None, Query(alias="version")] = None,
        score_threshold: Annotated[
            str | None, Query(description="detectors: lowest score kept, 0 to 1")
        ] = None,
        max_detections: Annotated[
            str | None, Query(description="detectors: most detections per example, 1 to 1000")
        ] = None,
    ) -> Response:
        """Classes and probabilities for a list of examples, or a detector's boxes."""
        state["in_flight"] += 1
        try:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            image = media in IMAGE_TYPES
            if image:  # the body is one image file; the model and options are in the query
                raw = await read_body(
                    request, settings.max_body_bytes, settings.body_timeout_seconds
                )
                body = Body({}, may_hold_bools=False)
            else:
                body = await body_of(request)
            name = body.get("model", model_query)
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
            version = body.get("version", version_query)
            if version is not None and (
                isinstance(version, bool) or not isinstance(version, str | int)
            ):
                raise RequestRejected(
                    f'"version" must be a number or an alias, got {version!r}'[:200]
                )
            model = await model_of(request, name, None if version is None else str(version))
            query = {"score_threshold": score_threshold, "max_detections": max_detections}
            options = detection_options(
                [body.doc, {k: v for k, v in query.items() if v is not None}],
                detection=model.is_detector,
            )
            if image:
                x = parse_image(raw, model.input_shape)
            else:
                x = parse_predict(body, model.input_shape, settings.max_request_rows)
            result = await model.batcher.submit(x)
        finally:
            state["in_flight"] -= 1
        if model.is_detector:
            # Decoded per request, after the batch split: NumPy only (no torch here).
            fields = detection_response(result.output, **model.decoding(**options))
        else:
            fields = {
                "prediction": result.output.argmax(axis=1).tolist(),
                "probabilities": softmax(result.output).tolist(),
            }
        answer = {**fields, "model": model.name, "version": model.number}
        return JSONResponse(answer, headers=version_headers(model, result.batch_rows))

    @app.get(
        "/v2/models/{name}/download", tags=["over the air"],
        responses={**downloads, **_errors(400, 401, 403, 404, 503)},
    )  # fmt: skip
    async def download_model(request: Request, name: Name, kind: Format = "zip") -> Response:
        """The served version as a zip (model.onnx, model.json, version.json) or ONNX."""
        return await download(request, name, None, kind)

    @app.get(
        "/v2/models/{name}/versions/{version}/download", tags=["over the air"],
        responses={**downloads, **_errors(400, 401, 403, 404, 503)},
    )  # fmt: skip
    async def download_version(
        request: Request, name: Name, version: Version, kind: Format = "zip"
    ) -> Response:
        """One version as a zip or ONNX."""
        return await download(request, name, version, kind)

    @app.post(
        "/v2/models/{name}/samples", tags=["over the air"], status_code=201,
        response_model=SamplesResponse,
        responses=_errors(400, 401, 403, 404, 408, 409, 413, 503),
        openapi_extra=_json_body(SamplesRequest),
    )  # fmt: skip
    async def samples(request: Request, name: Name) -> Response:
        """Append labelled samples to the model's dataset as its next version (201: stored
        durably; they are in that version and every later one). Needs a write token."""
        record = await credential(request, "write")  # before anything else
        model = await pool().current(name)
        if model.is_detector:
            raise RequestRejected(
                f"model {name!r} is a detector: uploading samples with boxes is not supported yet"
            )
        permit(record, "write", name, dataset_for(model.name, model.version.data_version))
        dataset = dataset_for(model.name, model.version.data_version)
        body = await body_of(request)
        x, y = parse_samples(body, model.input_shape, model.num_classes, settings.max_request_rows)
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

    @app.get("/v2/models/{name}/stats", tags=["models"], responses=_errors(401, 403, 404, 503))
    async def stats(request: Request, name: Name) -> dict[str, Any]:
        """Micro-batching counters of the served versions of the model."""
        await model_of(request, name)
        versions = {
            str(m.number): vars(m.batcher.stats).copy() for m in pool().loaded() if m.name == name
        }
        return {"name": name, "served": pool().served[name], "versions": versions}

    def openapi() -> dict[str, Any]:
        """The generated document, with the schemas of the bodies the handlers parse."""
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in _SCHEMAS:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
