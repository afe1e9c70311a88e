"""The models a server holds: registry versions loaded into onnxruntime, and the alias
watch that swaps in a newly promoted version without a restart.

A served model is named by the registry and reached through an alias (``production`` by
default). The pool keeps, per model name, which version the alias pointed at when it last
looked, and the loaded versions themselves (an onnxruntime session with its own micro-
batcher). Requests never touch the registry once a model is loaded: they read a dict.

**Hot swap.** :meth:`ModelPool.watch` re-reads the alias of every model the pool serves
every ``poll`` seconds (two small object reads per model, the alias and the manifest it
names, in a thread). When it points at a new version, that version is loaded and warmed
up first, and only then does the pool's dict entry change, in one step on the event loop:
requests that arrive after it get the new version, requests already queued on the old
version's batcher are still answered by it, and none is dropped. A promotion is therefore
served within ``poll`` seconds plus the load time (milliseconds for small models).

Versions asked for by number (``/v2/models/{name}/versions/{n}/...``) are loaded on
demand too; at most ``keep`` versions that no alias currently points at stay loaded.

**A broken model never takes the others down.** A model whose alias file is garbage,
whose manifest is corrupt, or whose blob is truncated or missing (or not a model
onnxruntime can load) is recorded as broken with the reason: its routes answer 503 with
that reason (the store's location left out), ``/v2/models/{name}/ready`` says false, every
other model is served as usual, and :meth:`ModelPool.refresh` tries it again every poll
until it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from fedge.central.registry import (
    LATEST,
    ONNX_FILE,
    SPEC_FILE,
    ModelRegistry,
    ModelVersion,
    check_alias,
)
from fedge.central.serving.batcher import MicroBatcher
from fedge.central.versions import parse_version
from fedge.errors import FedgeError, ModelNotFound, RegistryError, RequestRejected

__all__ = ["BUNDLE_MANIFEST", "LoadedModel", "ModelPool", "bundle_zip"]

log = logging.getLogger("fedge.serve")

BUNDLE_MANIFEST = "version.json"
# A fixed timestamp makes the zip of a version the same bytes on every server.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
# The registry's rule for model names: a name outside it cannot exist.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Models named in an unknown model's 404, at most.
_LISTED = 20


def bundle_zip(version: ModelVersion, files: dict[str, bytes]) -> bytes:
    """The download bundle of ``version``: ``model.onnx``, ``model.json`` and
    ``version.json`` (name, version, creation time, file hashes, metrics, data version,
    and for a signed version its signature with the hashes it covers) in a zip whose bytes
    depend only on the contents."""
    manifest = {
        "name": version.name,
        "version": version.version,
        "created_at": version.created_at.isoformat(),
        "files": {name: ref.sha256 for name, ref in version.files.items() if name in files},
        "metrics": version.metrics,
        "data_version": version.data_version,
    }
    if version.task is not None:
        manifest["task"] = version.task
    if version.signature is not None:
        # Signed over every file of the version, including those not in the bundle.
        manifest["signed_files"] = {name: ref.sha256 for name, ref in version.files.items()}
        manifest["signature"] = version.signature.model_dump()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        entries = {**files, BUNDLE_MANIFEST: json.dumps(manifest, indent=2).encode()}
        for name, data in sorted(entries.items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


@dataclass(frozen=True)
class LoadedModel:
    """One registry version, ready to answer requests."""

    version: ModelVersion
    input_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    onnx: bytes
    bundle: bytes
    batcher: MicroBatcher
    output_shape: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def is_detector(self) -> bool:
        """Whether the version was registered as a detector (its task says so)."""
        return self.version.task_kind == "detection"

    def decoding(self, **options: Any) -> dict[str, Any]:
        """The arguments of :func:`fedge.tasks.responses.decode_detections` for this
        detector: its classes and input size, ``options`` over its task's defaults."""
        task = self.version.task or {}
        return {
            "num_classes": self.num_classes,
            "image_size": tuple(self.input_shape[1:]),
            "score_threshold": float(task.get("score_threshold", 0.3)),
            "max_detections": int(task.get("max_detections", 100)),
            **options,
        }

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def etag(self) -> str:
        """The SHA-256 of ``model.onnx``: what identifies the frozen model on a device."""
        return self.version.files[ONNX_FILE].sha256


class ModelPool:
    """Loaded versions of registry models, found through ``alias``.

    Parameters
    ----------
    registry:
        Where models come from.
    executor:
        The thread pool that runs onnxruntime (shared by every model's batcher).
    alias:
        The alias to serve (default ``"production"``).
    max_batch_rows, max_delay:
        Micro-batching limits: rows per onnxruntime call (default 64) and seconds a request
        waits for others to join it (default 0.002).
    threads:
        onnxruntime's intra-op threads per session (default 1).
    keep:
        Versions loaded by number, beyond the aliased ones, kept in memory (default 4).
    in_flight:
        Inference requests the server is handling (see :class:`MicroBatcher`).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        executor: Executor,
        *,
        alias: str = "production",
        max_batch_rows: int = 64,
        max_delay: float = 0.002,
        threads: int = 1,
        keep: int = 4,
        in_flight: Callable[[], int] | None = None,
    ):
        self.registry = registry
        self.executor = executor
        self.alias = alias
        self.max_batch_rows = max_batch_rows
        self.max_delay = max_delay
        self.threads = threads
        self.keep = keep
        self.in_flight = in_flight
        self._current: dict[str, LoadedModel] = {}
        self._pinned: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Task[LoadedModel]] = {}
        self._broken: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @property
    def broken(self) -> dict[str, str]:
        """Model name to why it cannot be served (retried on every refresh)."""
        return dict(self._broken)

    def _public(self, exc: BaseException) -> str:
        """What went wrong, for an HTTP answer: the store's location left out."""
        text = str(exc) if isinstance(exc, FedgeError) else f"{type(exc).__name__}: {exc}"
        places = {self.registry.store.url, str(getattr(self.registry.store, "root", ""))}
        for where in sorted(places, key=len, reverse=True):
            if where:
                text = text.replace(f" in {where}", "").replace(where, "the store")
        return text[:500]

    def _unavailable(self, name: str) -> RequestRejected:
        return RequestRejected(
            f"model {name!r} cannot be served: {self._broken[name]} (retried every poll)", 503
        )

    @property
    def served(self) -> dict[str, int]:
        """Model name to the version its alias pointed at on the last look."""
        return {name: m.number for name, m in self._current.items()}

    def loaded(self) -> list[LoadedModel]:
        """Every loaded version (aliased and pinned), without repeats."""
        seen = {(m.name, m.number): m for m in self._pinned.values()}
        seen.update({(m.name, m.number): m for m in self._current.values()})
        return list(seen.values())

    def _load_sync(self, version: ModelVersion) -> tuple[ort.InferenceSession, dict[str, bytes]]:
        if ONNX_FILE not in version.files:
            raise RequestRejected(
                f"{version.name} version {version.version} has no {ONNX_FILE} to serve", 404
            )
        files = {
            ONNX_FILE: self.registry.read_file(version, ONNX_FILE),
            SPEC_FILE: self.registry.read_file(version, SPEC_FILE),
        }
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            files[ONNX_FILE], sess_options=options, providers=["CPUExecutionProvider"]
        )
        return session, files

    async def _load(self, version: ModelVersion) -> LoadedModel:
        session, files = await asyncio.to_thread(self._load_sync, version)
        input_name = session.get_inputs()[0].name
        output_name = session.get_outputs()[0].name
        input_shape = tuple(int(d) for d in version.spec["input_shape"])

        def run(x: np.ndarray) -> np.ndarray:
            return session.run([output_name], {input_name: x})[0]

        # One warm-up call: it allocates onnxruntime's buffers and tells the class count.
        probe = np.zeros((1, *input_shape), dtype=np.float32)
        logits = await asyncio.get_running_loop().run_in_executor(self.executor, run, probe)
        bundle = await asyncio.to_thread(bundle_zip, version, files)
        batcher = MicroBatcher(
            run,
            self.executor,
            max_rows=self.max_batch_rows,
            max_delay=self.max_delay,
            in_flight=self.in_flight,
        )
        num_classes = int(logits.shape[1])
        if version.task_kind == "detection":  # the output map: heatmaps, size, offset
            num_classes = int((version.task or {}).get("num_classes", num_classes - 4))
        return LoadedModel(
            version=version,
            input_name=input_name,
            input_shape=input_shape,
            num_classes=num_classes,
            onnx=files[ONNX_FILE],
            bundle=bundle,
            batcher=batcher,
            output_shape=tuple(int(d) for d in logits.shape[1:]),
        )

    async def _loaded(self, version: ModelVersion) -> LoadedModel:
        """``version`` loaded, reusing a loaded copy or a load already under way."""
        key = (version.name, version.version)
        for model in (self._current.get(version.name), self._pinned.get(key)):
            if model is not None and model.number == version.version:
                return model
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(version))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _unknown(self, name: str) -> RequestRejected:
        """The 404 for a model the registry lacks, listing the models it holds (but not
        where the registry lives)."""
        names = await asyncio.to_thread(self.registry.list_models)
        shown = ", ".join(names[:_LISTED]) or "none"
        if len(names) > _LISTED:
            shown += f" and {len(names) - _LISTED} more"
        return RequestRejected(f"unknown model {name!r} (available: {shown})", 404)

    async def _resolve(self, name: str, ref: int | str | None) -> ModelVersion:
        """The manifest of version ``ref`` of ``name``; unknown ones are a 404 that names
        what is missing (and, for a model, the ones there are)."""
        if not _NAME.fullmatch(name):
            raise await self._unknown(name)
        if isinstance(ref, str) and parse_version(ref) is None and ref != LATEST:
            try:
                check_alias(ref)
            except RegistryError:
                raise RequestRejected(f"unknown version {ref!r} of model {name!r}", 404) from None
        try:
            return await asyncio.to_thread(self.registry.get, name, ref)
        except ModelNotFound as exc:
            if str(exc).startswith("unknown model"):
                raise await self._unknown(name) from None
            raise RequestRejected(str(exc), 404) from None

    async def current(self, name: str) -> LoadedModel:
        """The version of ``name`` that the alias points at (loaded on first use); a 503
        for a model recorded as broken."""
        model = self._current.get(name)
        if model is not None:
            return model
        if name in self._broken:
            raise self._unavailable(name)
        async with self._lock:
            model = self._current.get(name)
            if model is None:
                if name in self._broken:
                    raise self._unavailable(name)
                model = await self._load_current(name)
        return model

    async def _load_current(self, name: str) -> LoadedModel:
        """Load the aliased version of ``name`` into ``_current``; on any failure but a
        client's mistake, record ``name`` as broken and raise its 503."""
        try:
            model = await self._loaded(await self._resolve(name, self.alias))
        except RequestRejected:
            raise
        except Exception as exc:
            reason = self._public(exc)
            if self._broken.get(name) != reason:
                log.error("cannot serve %s: %s", name, exc)
            self._broken[name] = reason
            raise self._unavailable(name) from None
        self._current[name] = model
        if self._broken.pop(name, None) is not None:
            log.info("%s loads again", name)
        log.info("serving %s version %d (%s)", name, model.number, self.alias)
        return model

    async def retry_broken(self) -> None:
        """Try every broken model again (called by :meth:`watch`)."""
        for name in list(self._broken):
            async with self._lock:
                if name in self._current:
                    self._broken.pop(name, None)
                    continue
                with contextlib.suppress(RequestRejected):
                    await self._load_current(name)

    async def version(self, name: str, ref: str) -> LoadedModel:
        """Version ``ref`` of ``name``: a number, or an alias (looked up on every call)."""
        try:
            number = parse_version(ref)
            if number is None:
                number = (await self._resolve(name, ref)).version
            current = self._current.get(name)
            if current is not None and current.number == number:
                return current
            model = self._pinned.get((name, number))
            if model is None:
                model = await self._loaded(await self._resolve(name, number))
                self._pinned[(name, number)] = model
                self._evict()
        except RequestRejected:
            raise
        except Exception as exc:
            log.error("cannot serve %s version %s: %s", name, ref, exc)
            raise RequestRejected(
                f"version {ref} of model {name!r} cannot be served: {self._public(exc)}", 503
            ) from None
        self._pinned.move_to_end((name, number))
        return model

    def _evict(self) -> None:
        aliased = {(m.name, m.number) for m in self._current.values()}
        spare = [key for key in self._pinned if key not in aliased]
        for key in spare[: max(0, len(spare) - self.keep)]:
            self._pinned.pop(key).batcher.close()

    async def refresh(self) -> list[tuple[str, int, int]]:
        """Re-read the alias of every served model and swap in versions that changed;
        returns ``(name, old, new)`` for each swap."""
        swaps = []
        for name, old in list(self._current.items()):
            try:
                version = await asyncio.to_thread(self.registry.get, name, self.alias)
                if version.version == old.number:
                    continue
                new = await self._loaded(version)
            except Exception as exc:  # keep serving the old version; say why once per look
                log.warning("cannot refresh %s: %s", name, exc)
                continue
            self._current[name] = new
            if (name, old.number) not in self._pinned:
                old.batcher.close()
            swaps.append((name, old.number, new.number))
            log.info("%s: %s moved from version %d to %d", name, self.alias, old.number, new.number)
        return swaps

    async def watch(self, poll: float) -> None:
        """Call :meth:`refresh` every ``poll`` seconds, forever (cancel to stop)."""
        while True:
            await asyncio.sleep(poll)
            await self.refresh()
            await self.retry_broken()

    async def close(self) -> None:
        """Stop every batcher after it has answered what it holds."""
        models = self.loaded()
        for model in models:
            model.batcher.close()
        await asyncio.gather(*(m.batcher.wait_closed() for m in models))

    async def describe(self, model: LoadedModel) -> dict[str, Any]:
        """The v2 model metadata of ``model``, with its registry's versions and aliases."""
        numbers, aliases = await asyncio.gather(
            asyncio.to_thread(self.registry.version_numbers, model.name),
            asyncio.to_thread(self.registry.aliases, model.name),
        )
        outputs = [
            {"name": "logits", "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ]
        if model.is_detector:
            shape = [-1, *model.output_shape]
            outputs = [
                {"name": "output", "datatype": "FP32", "shape": shape},
                {"name": "detections", "datatype": "FP32", "shape": [-1, 7]},
            ]
        return {
            "name": model.name,
            "versions": [str(n) for n in numbers],
            "version": str(model.number),
            "aliases": aliases,
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_shape]}
            ],
            "outputs": outputs,
        }
