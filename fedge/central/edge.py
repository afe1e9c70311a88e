"""The edge app: a frozen model downloaded from the inference server, kept on the device,
run with onnxruntime alone, updated over the air, and labelled samples sent back.

This module needs only NumPy, httpx and onnxruntime: no PyTorch, so it runs on devices
where torch is not installed (tested by importing it with torch made unimportable).

Cache layout, per model, under the cache folder::

    <model>/current                 name of the folder holding the version in use
    <model>/v<n>-<sha12>/           model.onnx, model.json, version.json of one download

An update asks ``GET /v2/models/<model>/download`` with ``If-None-Match`` set to the cached
model's SHA-256: an unchanged model costs one empty 304 answer. A new one is checked before
it replaces anything: every file against the SHA-256 that the bundle's ``version.json``
lists, ``model.onnx`` also against what the server states beside the zip (the ``ETag``,
and the version in ``X-Model-Version``), and, since whoever can rewrite the zip on the way
can rewrite its ``version.json`` too, the model must load in onnxruntime and run on an
input of the shape ``model.json`` states. Only then is it made current, by an atomic
rename of the ``current`` file: a refused download or a device that loses power mid-update
keeps running the old model.

The cached files are checked against their hashes again whenever they are loaded (and
again when they change on disk), and before an update answers "up to date": a copy
changed on the device is never used, and the next update downloads it again.

The bundle's ``version.json`` says what the model does (its ``task``, as the registry
recorded it): a classifier's predictions are classes and probabilities, a detector's are
boxes, decoded by the same NumPy code as ``fedge serve``'s (:mod:`fedge.tasks.responses`),
so both answer the same rows for the same input. Image files are read, and detections
drawn on them, with Pillow, imported only when needed.
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from fedge.central.edge_images import IMAGE_SUFFIXES, check_image, load_image, one_line
from fedge.central.npfile import read_npy, read_npz
from fedge.central.signing import load_public_key, verify_version
from fedge.errors import ConfigError, DataError, ServingError
from fedge.tasks.responses import decode_detections

__all__ = [
    "CachedModel",
    "Detections",
    "EdgeApp",
    "Prediction",
    "UpdateResult",
    "default_cache",
    "load_inputs",
    "load_samples",
    "softmax",
]

CACHE_ENV = "FEDGE_EDGE_CACHE"
_HASHED = ("model.onnx", "model.json")  # version.json lists their SHA-256
_BUNDLE = (*_HASHED, "version.json")


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
    repaired: bool = False
    """The cached copy was corrupt (changed on the device) and has been downloaded again."""


@dataclass(frozen=True)
class _Runtime:
    """A cached version loaded into onnxruntime, and the state of its files when loaded
    (``key``): files that change on disk are checked again."""

    key: tuple[Any, ...]
    session: ort.InferenceSession
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class Prediction:
    """Class indices and probabilities of a batch, and the version that computed them."""

    labels: np.ndarray
    probabilities: np.ndarray
    model: str
    version: int


@dataclass(frozen=True)
class Detections:
    """A detector's boxes for a batch of images, and the version that found them.

    ``rows`` holds per image a float32 ``(n, 6)`` array of rows ``[class, score, xmin,
    ymin, xmax, ymax]``, best score first, corners normalised to [0, 1] by the image's
    width and height: what ``fedge serve``'s ``/predict`` answers for the same input and
    options. ``image_size`` is the model's input ``(height, width)`` in pixels;
    ``categories`` names the classes when the version records names (its task's
    ``categories``), else ``None``.
    """

    rows: list[np.ndarray]
    image_size: tuple[int, int]
    categories: tuple[str, ...] | None
    score_threshold: float
    max_detections: int
    model: str
    version: int

    def prediction(self) -> list[list[list[float]]]:
        """The rows as ``/predict``'s ``prediction`` field: lists, the class an ``int``."""
        return [[[int(r[0]), *(float(v) for v in r[1:])] for r in image] for image in self.rows]

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or ``class <index>`` when the version has none."""
        if self.categories is not None and 0 <= index < len(self.categories):
            return self.categories[index]
        return f"class {index}"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a batch of logits, computed stably (the row maximum is subtracted
    first); the server's answers use it too."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mismatch(files: dict[str, bytes], meta: Any) -> str | None:
    """What is wrong with ``files`` given their ``version.json`` (``meta``), or ``None``
    when every file has the SHA-256 it lists."""
    hashes = meta.get("files") if isinstance(meta, dict) else None
    for name in _HASHED:
        expected = hashes.get(name) if isinstance(hashes, dict) else None
        if not isinstance(expected, str):
            return f"version.json lists no SHA-256 of {name}"
        if _sha256(files[name]) != expected:
            return f"{name} does not match its SHA-256 in version.json"
    return None


def _open(files: dict[str, bytes]) -> tuple[ort.InferenceSession, tuple[int, ...]]:
    """``model.onnx`` in onnxruntime, and ``model.json``'s input shape, checked by running
    the model once on zeros of that shape; a :class:`ServingError` says what fails."""
    try:
        shape = tuple(int(d) for d in json.loads(files["model.json"])["input_shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ServingError(f"model.json is not a model spec ({one_line(exc)})") from None
    if not shape or not all(0 < d <= 1 << 16 for d in shape) or math.prod(shape) > 1 << 24:
        raise ServingError(f"model.json states an impossible input shape {list(shape)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            files["model.onnx"], sess_options=options, providers=["CPUExecutionProvider"]
        )
        probe = np.zeros((1, *shape), dtype=np.float32)
        session.run(None, {session.get_inputs()[0].name: probe})
    except Exception as exc:  # onnxruntime raises its own types, for any model or input
        raise ServingError(
            f"onnxruntime cannot run model.onnx on the input shape {list(shape)} of "
            f"model.json: {one_line(exc)}"
        ) from None
    return session, shape


def _file_state(folder: Path) -> tuple[Any, ...]:
    """The folder and its files' inode, size and modification time."""
    state: list[Any] = [folder]
    for name in _HASHED:
        try:
            st = (folder / name).stat()
            state.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            state.append(None)
    return tuple(state)


def _task(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``task`` of a ``version.json``; a version without one is a classifier."""
    task = meta.get("task")
    return dict(task) if isinstance(task, dict) else {"kind": "classification"}


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
    token:
        An API token (``fedge tokens create``), sent as a bearer token with every request:
        needed to send samples, and to download when the server protects reads.
    publisher_key:
        The publisher's Ed25519 public key (base64, or a file holding it; see
        :mod:`fedge.central.signing`): when given, only versions it signed are installed
        or run.
    """

    def __init__(
        self,
        model: str,
        server: str | None = None,
        cache: Path | None = None,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        publisher_key: str | None = None,
    ):
        self.model = model
        self.server = server.rstrip("/") if server else None
        self.cache = Path(cache) if cache is not None else default_cache()
        self.timeout = timeout
        self.token = token
        self.publisher = load_public_key(publisher_key) if publisher_key else None
        self._runtime_cache: _Runtime | None = None

    @property
    def _folder(self) -> Path:
        return self.cache / self.model

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.server is None:
            raise ServingError("no server given: pass --server or set FEDGE_SERVER")
        url = f"{self.server}{path}"
        if self.token:
            auth = {"Authorization": f"Bearer {self.token}"}
            kwargs["headers"] = {**kwargs.get("headers", {}), **auth}
        try:
            return httpx.request(method, url, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise ServingError(f"cannot reach the server at {self.server}: {exc}") from None

    def _current(self) -> tuple[CachedModel, dict[str, Any]] | None:
        """The version the ``current`` file names, and its ``version.json``, unchecked."""
        try:
            current = (self._folder / "current").read_text().strip()
            meta = json.loads((self._folder / current / "version.json").read_text())
            model = CachedModel(
                name=self.model,
                version=int(meta["version"]),
                sha256=str(meta["files"]["model.onnx"]),
                folder=self._folder / current,
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServingError(
                f"the cached model in {self._folder} is corrupt ({one_line(exc)}): run "
                f"`fedge edge update {self.model}` to download it again"
            ) from None
        return model, meta

    def _checked_files(self, model: CachedModel, meta: dict[str, Any]) -> dict[str, bytes]:
        """The cached files of ``model``, checked against their hashes."""
        what = f"the cached model {self.model!r} version {model.version} in {model.folder}"
        fix = f"run `fedge edge update {self.model}` to download it again"
        try:
            files = {name: (model.folder / name).read_bytes() for name in _HASHED}
        except OSError as exc:
            raise ServingError(f"{what} is incomplete ({exc.strerror}): {fix}") from None
        problem = _mismatch(files, meta) or self._unsigned(files, meta)
        if problem is None and not model.folder.name.endswith(f"-{model.sha256[:12]}"):
            problem = "version.json does not name the model.onnx the folder was made for"
        if problem is not None:
            raise ServingError(f"{what} is corrupt: {problem}; {fix}")
        return files

    def _unsigned(self, files: dict[str, bytes], meta: Any) -> str | None:
        """What is wrong with the publisher's signature on ``files`` (``None`` if it
        verifies, or if no publisher key is configured)."""
        if self.publisher is None:
            return None
        if meta.get("signature") is None:
            return "it is not signed, and a publisher key is required"
        signed = meta.get("signed_files")
        if not isinstance(signed, dict) or any(
            signed.get(name) != _sha256(files[name]) for name in _HASHED
        ):
            return "its files are not the ones the publisher signed"
        try:
            name, version = str(meta["name"]), int(meta["version"])
        except (KeyError, TypeError, ValueError):
            return "version.json does not say which version it is"
        task = meta.get("task")
        if task is not None and not isinstance(task, dict):
            return "version.json's task is not a JSON object"
        problem = verify_version(self.publisher, name, version, signed, meta.get("signature"), task)
        if problem is None and name != self.model:
            problem = f"it is a signed version of {name!r}, not of {self.model!r}"
        return problem

    def cached(self) -> CachedModel | None:
        """The model version in use on this device, or ``None`` before the first update.

        Its files are checked against their hashes: a :class:`ServingError` if they
        changed (:meth:`update` then downloads the version again)."""
        found = self._current()
        if found is None:
            return None
        self._checked_files(*found)
        return found[0]

    def update(self) -> UpdateResult:
        """Download the server's current version unless the cached one is it already (and
        intact); a download is checked before it replaces the version in use (see the
        module docstring)."""
        try:
            cached, repaired = self.cached(), False
        except ServingError:  # changed on the device: download it again
            cached, repaired = None, True
        headers = {"If-None-Match": f'"{cached.sha256}"'} if cached else {}
        response = self._request("GET", f"/v2/models/{self.model}/download", headers=headers)
        if response.status_code == 304 and cached is not None:
            return UpdateResult(changed=False, model=cached)
        if response.status_code != 200:
            raise _server_error(response)
        try:
            with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
                files = {name: zf.read(name) for name in _BUNDLE}
            meta = json.loads(files["version.json"])
            version = int(meta["version"])
        except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, TypeError) as exc:
            raise ServingError(
                f"the downloaded bundle of {self.model!r} is corrupt: {one_line(exc)}"
            ) from None
        kept = f"version {cached.version} stays in use" if cached else "nothing was installed"
        refused = f"the download of {self.model!r} version {version} was refused"
        etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
        stated = response.headers.get("x-model-version")
        digest = _sha256(files["model.onnx"])
        problem = _mismatch(files, meta) or self._unsigned(files, meta)
        if problem is None and digest != etag:
            problem = "model.onnx does not match the server's ETag"
        if problem is None and stated is not None and stated != str(version):
            problem = f"the server sent version {stated}, version.json says {version}"
        if problem is None:
            try:
                _open(files)
            except ServingError as exc:
                problem = str(exc)
        if problem is not None:
            raise ServingError(f"{refused}: {problem} (changed on the way?); {kept}")
        model = self._install(version, digest, files)
        changed = cached is None or cached.sha256 != digest
        return UpdateResult(changed=changed, model=model, repaired=repaired)

    def _install(self, version: int, digest: str, files: dict[str, bytes]) -> CachedModel:
        """Write the checked ``files`` to a staging folder, rename it into place and only
        then make it the version in use."""
        name = f"v{version}-{digest[:12]}"
        folder = self._folder / name
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=self._folder, prefix=f".{name}."))
            try:
                for filename, data in files.items():
                    (staging / filename).write_bytes(data)
                if folder.exists():  # a corrupt copy of the same version
                    shutil.rmtree(folder)
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            pointer = self._folder / ".current.tmp"
            pointer.write_text(name)
            os.replace(pointer, self._folder / "current")
            for old in self._folder.iterdir():
                if old.is_dir() and old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise ServingError(f"cannot write the model cache {self._folder}: {exc}") from None
        return CachedModel(name=self.model, version=version, sha256=digest, folder=folder)

    def _runtime(self, model: CachedModel, meta: dict[str, Any]) -> _Runtime:
        """``model`` in onnxruntime: loaded, after checking its files, on first use and
        whenever the files changed on disk since."""
        key = _file_state(model.folder)
        if self._runtime_cache is None or self._runtime_cache.key != key:
            files = self._checked_files(model, meta)
            try:
                session, shape = _open(files)
            except ServingError as exc:
                raise ServingError(
                    f"the cached model {self.model!r} version {model.version} does not load "
                    f"({exc}): run `fedge edge update {self.model}` to download it again"
                ) from None
            self._runtime_cache = _Runtime(key, session, shape)
        return self._runtime_cache

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, from the cached model's spec."""
        return self._runtime(*self._require()).input_shape

    def _require(self) -> tuple[CachedModel, dict[str, Any]]:
        found = self._current()
        if found is None:
            raise ServingError(
                f"no cached model {self.model!r} in {self.cache}: run `fedge edge update "
                f"{self.model}` first"
            )
        return found

    def task(self) -> dict[str, Any]:
        """What the cached model does: the ``task`` its ``version.json`` records
        (:meth:`fedge.tasks.Task.to_dict`, with a ``kind``); ``{"kind": "classification"}``
        for a version registered without one, as the registry reads it."""
        return _task(self._require()[1])

    def predict(
        self,
        x: np.ndarray,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> Prediction | Detections:
        """Run the cached model on the examples ``x`` (``(n, *input_shape)``, or
        ``(n, features)`` of the same size), on the device.

        A classifier returns a :class:`Prediction`; a detector (its version's task says
        so) returns :class:`Detections`, decoded with ``score_threshold`` (0 to 1) and
        ``max_detections`` (at least 1), each by default what the version's task records
        (else 0.3 and 100), as ``fedge serve`` decodes them. A classifier refuses them.
        """
        model, meta = self._require()
        runtime = self._runtime(model, meta)
        task = _task(meta)
        kind = task.get("kind")
        if kind not in ("classification", "detection"):
            raise ServingError(
                f"the cached model {self.model!r} version {model.version} is a {kind!r} "
                "model; this edge app runs classification and detection models"
            )
        if kind == "classification" and (score_threshold, max_detections) != (None, None):
            raise ConfigError(
                f"score_threshold and max_detections apply to detection models only; "
                f"{self.model!r} classifies"
            )
        shape = runtime.input_shape
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
        session = runtime.session
        try:
            (outputs,) = session.run(None, {session.get_inputs()[0].name: x})
        except Exception as exc:  # onnxruntime raises its own types
            raise ServingError(
                f"the cached model {self.model!r} version {model.version} failed: {one_line(exc)}"
            ) from None
        if kind == "detection":
            return self._detections(
                outputs, task, shape, model.version, score_threshold, max_detections
            )
        return Prediction(
            labels=outputs.argmax(axis=1),
            probabilities=softmax(outputs),
            model=self.model,
            version=model.version,
        )

    def _detections(
        self,
        outputs: np.ndarray,
        task: dict[str, Any],
        input_shape: tuple[int, ...],
        version: int,
        score_threshold: float | None,
        max_detections: int | None,
    ) -> Detections:
        """The detector's ``outputs`` decoded as ``fedge serve`` decodes them (the same
        defaults from the task, the same NumPy code)."""
        what = f"the cached model {self.model!r} version {version}"
        try:
            num_classes = int(task.get("num_classes", outputs.shape[1] - 4))
            threshold = float(task.get("score_threshold", 0.3))
            most = int(task.get("max_detections", 100))
        except (TypeError, ValueError):
            raise ServingError(f"{what} has a malformed task in version.json: {task}") from None
        if len(input_shape) != 3 or outputs.ndim != 4 or outputs.shape[1] != num_classes + 4:
            raise ServingError(
                f"{what} is recorded as a detector of {num_classes} classes (output map "
                f"[n, {num_classes + 4}, h, w] from (C, H, W) images), but maps "
                f"{list(input_shape)} to {list(outputs.shape[1:])}"
            )
        if score_threshold is not None:
            threshold = score_threshold
        if max_detections is not None:
            most = max_detections
        if not (isinstance(threshold, int | float) and 0 <= threshold <= 1):  # NaN too
            raise ConfigError(f"score_threshold must lie in [0, 1], got {threshold}")
        if isinstance(most, bool) or not isinstance(most, int | float) or not 1 <= most < math.inf:
            raise ConfigError(f"max_detections must be an integer >= 1, got {most}")
        if int(most) != most:
            raise ConfigError(f"max_detections must be an integer >= 1, got {most}")
        image_size = (int(input_shape[1]), int(input_shape[2]))
        rows = decode_detections(
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            score_threshold=threshold,
            max_detections=int(most),
        )
        names = task.get("categories")
        valid = (
            isinstance(names, list)
            and len(names) == num_classes
            and all(isinstance(n, str) for n in names)
        )
        return Detections(
            rows=rows,
            image_size=image_size,
            categories=tuple(names) if valid else None,
            score_threshold=threshold,
            max_detections=int(most),
            model=self.model,
            version=version,
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


def load_inputs(path: Path, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Examples from a file: ``.json`` (``{"instances": [...]}`` or a list), ``.npy``,
    ``.npz`` (array ``x``), or an image (``.png``, ``.jpg``, ``.jpeg``; one example, read
    by :func:`load_image`).

    ``input_shape``, the model's ``(C, H, W)``, is what an image must have (an array is
    checked by :meth:`EdgeApp.predict`, which also takes flat rows): a :class:`DataError`
    names both shapes otherwise.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = load_image(path)
        if input_shape is not None:
            check_image(path, image, input_shape)
        return image[None]
    if path.suffix not in (".json", ".npy", ".npz"):
        raise DataError(f"{path}: use a .json, .npy, .npz, .png or .jpg file")
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
