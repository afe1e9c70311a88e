"""The edge app: a frozen model downloaded from the inference server, kept on the device,
run with onnxruntime alone, updated over the air, and labelled samples sent back.

This module needs only NumPy, httpx and onnxruntime: no PyTorch, so it runs on devices
where torch is not installed (tested by importing it with torch made unimportable).

Cache layout, per model, under the cache folder::

    <model>/current                 name of the folder holding the version in use
    <model>/v<n>-<sha12>/           model.onnx, model.json, version.json of one download

An update asks ``GET /v2/models/<model>/download`` with ``If-None-Match`` set to the cached
model's SHA-256: an unchanged model costs one empty 304 answer. A new one is unpacked into
its own folder, checked against the ``ETag`` (the SHA-256 of ``model.onnx``), and only then
made current by an atomic rename of the ``current`` file, so a device that loses power
mid-update keeps running the old model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from fedge.central.npfile import read_npy, read_npz
from fedge.errors import DataError, ServingError

__all__ = [
    "CachedModel",
    "EdgeApp",
    "Prediction",
    "UpdateResult",
    "default_cache",
    "load_inputs",
    "load_samples",
    "softmax",
]

CACHE_ENV = "FEDGE_EDGE_CACHE"
_BUNDLE = ("model.onnx", "model.json", "version.json")


def default_cache() -> Path:
    """``$FEDGE_EDGE_CACHE``, else ``~/.cache/fedge/edge``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedge" / "edge")


@dataclass(frozen=True)
class CachedModel:
    """A model version on the device."""

    name: str
    version: int
    sha256: str
    folder: Path

    @property
    def onnx_path(self) -> Path:
        return self.folder / "model.onnx"


@dataclass(frozen=True)
class UpdateResult:
    """What an update did: whether a new version came, and the version now in use."""

    changed: bool
    model: CachedModel


@dataclass(frozen=True)
class Prediction:
    """Class indices and probabilities of a batch, and the version that computed them."""

    labels: np.ndarray
    probabilities: np.ndarray
    model: str
    version: int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a batch of logits, computed stably (the row maximum is subtracted
    first); the server's answers use it too."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _server_error(response: httpx.Response) -> ServingError:
    try:
        message = response.json().get("error", response.text)
    except (json.JSONDecodeError, AttributeError):
        message = response.text.strip() or response.reason_phrase
    return ServingError(f"the server answered {response.status_code}: {message}")


class EdgeApp:
    """One model on one device.

    Parameters
    ----------
    model:
        The model's name on the server.
    server:
        The inference server's URL, e.g. ``http://127.0.0.1:8000`` (needed by
        :meth:`update` and :meth:`send` only).
    cache:
        Folder holding downloaded models (default :func:`default_cache`).
    timeout:
        Seconds to wait for the server (default 30).
    """

    def __init__(
        self,
        model: str,
        server: str | None = None,
        cache: Path | None = None,
        *,
        timeout: float = 30.0,
    ):
        self.model = model
        self.server = server.rstrip("/") if server else None
        self.cache = Path(cache) if cache is not None else default_cache()
        self.timeout = timeout
        self._session: tuple[str, ort.InferenceSession] | None = None

    @property
    def _folder(self) -> Path:
        return self.cache / self.model

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.server is None:
            raise ServingError("no server given: pass --server or set FEDGE_SERVER")
        url = f"{self.server}{path}"
        try:
            return httpx.request(method, url, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise ServingError(f"cannot reach the server at {self.server}: {exc}") from None

    def cached(self) -> CachedModel | None:
        """The model version in use on this device, or ``None`` before the first update."""
        try:
            current = (self._folder / "current").read_text().strip()
            meta = json.loads((self._folder / current / "version.json").read_text())
            return CachedModel(
                name=self.model,
                version=int(meta["version"]),
                sha256=str(meta["files"]["model.onnx"]),
                folder=self._folder / current,
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServingError(
                f"the cached model in {self._folder} is corrupt ({exc}): delete it and update"
            ) from None

    def update(self) -> UpdateResult:
        """Download the server's current version unless the cached one is it already."""
        cached = self.cached()
        headers = {"If-None-Match": f'"{cached.sha256}"'} if cached else {}
        response = self._request("GET", f"/v2/models/{self.model}/download", headers=headers)
        if response.status_code == 304 and cached is not None:
            return UpdateResult(changed=False, model=cached)
        if response.status_code != 200:
            raise _server_error(response)
        etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
        try:
            with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
                files = {name: zf.read(name) for name in _BUNDLE}
            meta = json.loads(files["version.json"])
            version = int(meta["version"])
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
            raise ServingError(
                f"the downloaded bundle of {self.model!r} is corrupt: {exc}"
            ) from None
        digest = hashlib.sha256(files["model.onnx"]).hexdigest()
        if digest != etag or digest != meta.get("files", {}).get("model.onnx"):
            raise ServingError(
                f"the downloaded model.onnx of {self.model!r} does not match its ETag "
                "(corrupted in transit?)"
            )
        model = self._install(version, digest, files)
        return UpdateResult(changed=cached is None or cached.sha256 != digest, model=model)

    def _install(self, version: int, digest: str, files: dict[str, bytes]) -> CachedModel:
        name = f"v{version}-{digest[:12]}"
        folder = self._folder / name
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            if not folder.is_dir():
                staging = Path(tempfile.mkdtemp(dir=self._folder, prefix=f".{name}."))
                for filename, data in files.items():
                    (staging / filename).write_bytes(data)
                os.replace(staging, folder)
            pointer = self._folder / ".current.tmp"
            pointer.write_text(name)
            os.replace(pointer, self._folder / "current")
            for old in self._folder.iterdir():
                if old.is_dir() and old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise ServingError(f"cannot write the model cache {self._folder}: {exc}") from None
        return CachedModel(name=self.model, version=version, sha256=digest, folder=folder)

    def _runtime(self, model: CachedModel) -> ort.InferenceSession:
        if self._session is None or self._session[0] != model.sha256:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(
                str(model.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._session = (model.sha256, session)
        return self._session[1]

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, from the cached model's spec."""
        model = self._require()
        spec = json.loads((model.folder / "model.json").read_text())
        return tuple(int(d) for d in spec["input_shape"])

    def _require(self) -> CachedModel:
        model = self.cached()
        if model is None:
            raise ServingError(
                f"no cached model {self.model!r} in {self.cache}: run `fedge edge update "
                f"{self.model}` first"
            )
        return model

    def predict(self, x: np.ndarray) -> Prediction:
        """Classify the examples ``x`` (``(n, *input_shape)`` or ``(n, features)``) with
        the cached model, on the device."""
        model = self._require()
        shape = self.input_shape()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim >= 2 and x.shape[1:] != shape and math.prod(x.shape[1:]) == math.prod(shape):
            x = x.reshape(len(x), *shape)
        if x.ndim < 2 or x.shape[1:] != shape or len(x) == 0:
            raise DataError(
                f"inputs must have shape [n, {', '.join(map(str, shape))}] with n >= 1, "
                f"got {list(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise DataError("inputs hold NaN or infinity")
        session = self._runtime(model)
        (logits,) = session.run(None, {session.get_inputs()[0].name: x})
        return Prediction(
            labels=logits.argmax(axis=1),
            probabilities=softmax(logits),
            model=self.model,
            version=model.version,
        )

    def send(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Send labelled examples to the server, which appends them to the model's dataset
        as its next version; returns its answer (``dataset``, ``version``, ``ref``,
        ``sha256``, ``samples`` sent, ``total`` examples in the new version)."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if len(x) != len(y):
            raise DataError(f"{len(x)} examples but {len(y)} labels")
        body = {"instances": x.tolist(), "labels": y.astype(np.int64).tolist()}
        response = self._request("POST", f"/v2/models/{self.model}/samples", json=body)
        if response.status_code != 201:
            raise _server_error(response)
        return response.json()


def _read(path: Path) -> Any:
    """A ``.json`` file's data, a ``.npy`` file's array, or an ``.npz`` file's arrays as a
    dict keyed ``npz:<name>`` (so they cannot be confused with JSON keys)."""
    path = Path(path)
    if path.suffix == ".npy":
        return read_npy(path)
    if path.suffix == ".npz":
        return {f"npz:{key}": array for key, array in read_npz(path).items()}
    if path.suffix != ".json":
        raise DataError(f"{path}: use a .json, .npy or .npz file")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _array(values: Any, what: str, path: Path) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError:
        raise DataError(f"{what} in {path} is ragged") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} in {path} must be numbers")
    return array


def load_inputs(path: Path) -> np.ndarray:
    """Examples from a file: ``.json`` (``{"instances": [...]}`` or a list), ``.npy``, or
    ``.npz`` (array ``x``)."""
    data = _read(path)
    if isinstance(data, dict):
        data = data.get("npz:x", data.get("instances"))
    if data is None:
        raise DataError(f'{path} holds no examples: use "instances" (JSON) or array x (npz)')
    return _array(data, "examples", path).astype(np.float32)


def load_samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labelled examples from ``.json`` (``{"instances": [...], "labels": [...]}``) or
    ``.npz`` (arrays ``x`` and ``y``)."""
    data = _read(path)
    if isinstance(data, dict) and "npz:x" in data:
        data = {"instances": data["npz:x"], "labels": data.get("npz:y")}
    if not isinstance(data, dict) or data.get("instances") is None or data.get("labels") is None:
        raise DataError(f"{path} must hold examples and labels: instances/labels or x/y")
    x = _array(data["instances"], "examples", path).astype(np.float32)
    y = _array(data["labels"], "labels", path)
    return x, y
