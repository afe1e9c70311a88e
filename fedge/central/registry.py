"""A model registry kept in an object store: named models with immutable numbered versions
and movable aliases such as ``production``. It needs no database, only a store.

Layout in the store::

    models/<name>/versions/<n>.json      manifest of version n: created once, never rewritten
    models/<name>/aliases/<alias>.json   {"version": n, "updated_at": ...}: rewritten to move
    blobs/sha256/<hex>                   every file of every version, by content

A version's manifest lists its files (``model.safetensors``, ``model.json``, usually
``model.onnx``) by SHA-256, with the model spec, metrics, the data version and the training
config. Registering uploads the files first and then creates the manifest of version
``max + 1`` with the store's create-if-absent write; if a concurrent registration took that
number the write fails, and it lists again and takes the next. The manifest is the commit
point: a registration that fails before it (weights that do not fit the spec, a storage
error) leaves no version behind, only unreferenced blobs at worst.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, ValidationError

from fedge.central.signing import Signature, sign_version, signing_key_from_env
from fedge.central.storage.base import ObjectStore, blob_key, file_sha256
from fedge.central.versions import (
    MAX_ATTEMPTS,
    create_next_version,
    parse_version,
    version_numbers,
)
from fedge.errors import ModelNotFound, ObjectNotFound, RegistryError, StorageError
from fedge.models.spec import ModelSpec, load_spec

__all__ = ["LATEST", "FileRef", "ModelRegistry", "ModelVersion", "check_alias"]

LATEST = "latest"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
SPEC_FILE = "model.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Each failed attempt means another registration got a number, so contention among N
# concurrent registrations ends within N attempts; this bound only stops a runaway loop.


class FileRef(BaseModel):
    """A file of a version: its content hash (the blob's name) and size in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    size: NonNegativeInt


class ModelVersion(BaseModel):
    """The manifest of one registered version (immutable once created)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = 1
    name: str
    version: PositiveInt
    created_at: datetime
    files: dict[str, FileRef]
    spec: dict[str, Any]
    metrics: dict[str, Any] = {}
    data_version: str | None = None
    config: dict[str, Any] | None = None
    source: str | None = None
    signature: Signature | None = None
    #: What the model does (:meth:`fedge.tasks.Task.to_dict`); ``None`` for versions
    #: registered without one, which are classifiers.
    task: dict[str, Any] | None = None

    @property
    def task_kind(self) -> str:
        """``"classification"`` or ``"detection"``."""
        return str((self.task or {}).get("kind", "classification"))

    def model_spec(self) -> ModelSpec:
        """The version's model spec, validated."""
        return load_spec(self.spec)


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(
            f"invalid {what} name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it can name an alias, else raise :class:`RegistryError`."""
    _check_name(alias, "alias")
    if parse_version(alias) is not None or alias == LATEST:
        raise RegistryError(f"invalid alias {alias!r}: it would read as a version reference")
    return alias


def _json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any] | None:
    """``value`` as plain JSON data (tuples become lists); NaN and infinities are refused."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must be JSON data without NaN or infinity: {exc}") from None


class ModelRegistry:
    """Named models with numbered versions and aliases, stored in ``store``.

    Parameters
    ----------
    store:
        Where manifests, aliases and files live (a :class:`LocalStore` or :class:`S3Store`).
    """

    def __init__(self, store: ObjectStore, *, signing_key: Ed25519PrivateKey | str | None = "env"):
        self.store = store
        #: Signs every new version (see :mod:`fedge.central.signing`); by default the key
        #: ``$FEDGE_SIGNING_KEY`` names, if set.
        self.signing_key = signing_key_from_env() if signing_key == "env" else signing_key

    def _versions_prefix(self, name: str) -> str:
        return f"models/{name}/versions/"

    def _aliases_prefix(self, name: str) -> str:
        return f"models/{name}/aliases/"

    def version_numbers(self, name: str) -> list[int]:
        """Version numbers of ``name``, ascending (empty for an unknown model)."""
        _check_name(name, "model")
        return version_numbers(self.store, self._versions_prefix(name))

    def _unknown_model(self, name: str) -> ModelNotFound:
        known = self.list_models()
        hint = f"models: {', '.join(known)}" if known else "the registry is empty"
        return ModelNotFound(f"unknown model {name!r} in {self.store.url} ({hint})")

    def register(
        self,
        name: str,
        files: Mapping[str, bytes],
        *,
        metrics: Mapping[str, Any] | None = None,
        data_version: str | None = None,
        config: Mapping[str, Any] | None = None,
        source: str | None = None,
        task: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Add the next version of model ``name`` (creating the model if it is new).

        Parameters
        ----------
        name:
            Model name: 1-100 letters, digits, ``.``, ``_`` or ``-``.
        files:
            File name to contents; must hold ``model.safetensors`` (the weights) and
            ``model.json`` (their spec), which must fit each other. Other files, such as
            ``model.onnx``, are stored alongside.
        metrics:
            Evaluation results (JSON data, e.g. ``{"test_accuracy": 0.91}``).
        data_version:
            Name of the dataset version the model was trained on.
        config:
            The training configuration (JSON data).
        source:
            Where the model came from, e.g. a run folder or a job id.
        task:
            What the model does (:meth:`fedge.tasks.Task.to_dict`, with a ``kind``);
            default none recorded (a classifier).

        Returns
        -------
        ModelVersion
            The new version's manifest.
        """
        _check_name(name, "model")
        for required in (WEIGHTS_FILE, SPEC_FILE):
            if required not in files:
                raise RegistryError(f"cannot register {name!r}: {required} is missing")
        for filename in files:
            if not _FILE.fullmatch(filename):
                raise RegistryError(f"invalid file name {filename!r} in the version of {name!r}")
        try:
            spec = load_spec(json.loads(files[SPEC_FILE]))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise RegistryError(f"{SPEC_FILE} of {name!r} is not JSON: {exc}") from None
        from fedge.central.weights import check_params, params_from_bytes  # torch: not to serve

        check_params(spec, params_from_bytes(files[WEIGHTS_FILE]))
        metrics_data = _json_object(metrics, "metrics") or {}
        config_data = _json_object(config, "config")
        task_data = _json_object(task, "task")
        if task_data is not None and task_data.get("kind") not in ("classification", "detection"):
            raise RegistryError(f"unknown task kind {task_data.get('kind')!r} for {name!r}")

        refs = {
            filename: FileRef(sha256=self.store.put_blob(data), size=len(data))
            for filename, data in files.items()
        }
        hashes = {filename: ref.sha256 for filename, ref in refs.items()}
        key = self.signing_key
        version = create_next_version(
            self.store,
            self._versions_prefix(name),
            lambda n: ModelVersion(
                name=name,
                version=n,
                created_at=datetime.now(UTC),
                files=refs,
                spec=spec.model_dump(mode="json"),
                metrics=metrics_data,
                data_version=data_version,
                config=config_data,
                source=source,
                signature=sign_version(key, name, n, hashes, task_data)
                if key is not None
                else None,
                task=task_data,
            ),
        )
        if version is None:
            raise RegistryError(f"no free version number for {name!r} after {MAX_ATTEMPTS} tries")
        return version

    def list_models(self) -> list[str]:
        """Names of all models with at least one version, sorted."""
        names = set()
        for key in self.store.list("models/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[2] == "versions":
                names.add(parts[1])
        return sorted(names)

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        _check_name(name, "model")
        numbers = self.version_numbers(name)
        if not numbers:
            raise self._unknown_model(name)
        return [self._read(name, n) for n in numbers]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias name to version number, for model ``name``."""
        _check_name(name, "model")
        prefix = self._aliases_prefix(name)
        result = {}
        for key in self.store.list(prefix):
            alias = key[len(prefix) :].removesuffix(".json")
            try:
                result[alias] = self._alias_target(key, self.store.get_bytes(key))
            except ObjectNotFound:
                continue
        return result

    def get(self, name: str, ref: int | str | None = None) -> ModelVersion:
        """A version of ``name``: by number (``3`` or ``"3"``), by alias (``"production"``),
        or the newest one (``None`` or ``"latest"``)."""
        _check_name(name, "model")
        if ref is None or ref == LATEST:
            numbers = self.version_numbers(name)
            if not numbers:
                raise self._unknown_model(name)
            return self._read(name, numbers[-1])
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise RegistryError(f"a version is a number or an alias, got {ref!r}")
        if isinstance(ref, int):
            return self._read(name, ref)
        number = parse_version(ref)
        if number is not None:
            return self._read(name, number)
        check_alias(ref)
        key = f"{self._aliases_prefix(name)}{ref}.json"
        try:
            number = self._alias_target(key, self.store.get_bytes(key))
        except ObjectNotFound:
            if not self.version_numbers(name):
                raise self._unknown_model(name) from None
            known = ", ".join(sorted(self.aliases(name))) or "none"
            raise ModelNotFound(f"model {name!r} has no alias {ref!r} (aliases: {known})") from None
        return self._read(name, number)

    def _alias_target(self, key: str, raw: bytes) -> int:
        """The version number an alias file names: a JSON object whose ``version`` is a
        positive integer; anything else is a corrupt alias."""
        try:
            number = json.loads(raw)["version"]
        except (ValueError, KeyError, TypeError, RecursionError):
            number = None
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise RegistryError(f"alias file {key} in {self.store.url} is corrupt")
        return number

    def _read(self, name: str, number: int) -> ModelVersion:
        key = f"{self._versions_prefix(name)}{number}.json"
        try:
            raw = self.store.get_bytes(key) if number > 0 else None
        except ObjectNotFound:
            raw = None
        if raw is None:
            numbers = self.version_numbers(name)
            if not numbers:
                raise self._unknown_model(name)
            raise ModelNotFound(
                f"model {name!r} has no version {number} (versions: {', '.join(map(str, numbers))})"
            )
        try:
            return ModelVersion.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the document"
            raise RegistryError(
                f"manifest {key} in {self.store.url} is corrupt ({where}: {first['msg']})"
            ) from None

    def promote(self, name: str, ref: int | str, alias: str = "production") -> ModelVersion:
        """Point ``alias`` of model ``name`` at version ``ref`` (a number, or another alias
        whose current version to take), moving it if it existed; returns that version."""
        check_alias(alias)
        version = self.get(name, ref)
        record = {"version": version.version, "updated_at": datetime.now(UTC).isoformat()}
        self.store.put_bytes(
            f"{self._aliases_prefix(name)}{alias}.json", json.dumps(record).encode()
        )
        return version

    def read_file(self, version: ModelVersion, filename: str) -> bytes:
        """Contents of one file of ``version`` (checked against its hash)."""
        ref = version.files.get(filename)
        if ref is None:
            raise ModelNotFound(
                f"{version.name} version {version.version} has no file {filename!r} "
                f"(files: {', '.join(sorted(version.files))})"
            )
        return self.store.get_blob(ref.sha256)

    def check_files(self, version: ModelVersion, *, hashes: bool = True) -> dict[str, str]:
        """File name to what is wrong with it (``missing`` or ``corrupt``) for each file of
        ``version`` that is not intact; ``hashes=False`` checks only that each blob exists
        with the recorded size (one metadata request per file, which catches truncation)."""
        problems = {}
        for filename, ref in sorted(version.files.items()):
            key = blob_key(ref.sha256)
            if not hashes:
                size = self.store.size(key)
                if size is None:
                    problems[filename] = "missing"
                elif size != ref.size:
                    problems[filename] = "corrupt"
                continue
            try:
                self.store.get_blob(ref.sha256)
            except ObjectNotFound:
                problems[filename] = "missing"
            except StorageError as exc:
                problems[filename] = "corrupt" if "corrupt" in str(exc) else str(exc)
        return problems

    def verify(self, name: str) -> list[str]:
        """Everything wrong with model ``name``: unreadable manifests and aliases, aliases
        naming no version, and missing or corrupt files (every blob is hashed)."""
        problems = []
        numbers = self.version_numbers(name)
        for number in numbers:
            try:
                version = self._read(name, number)
            except RegistryError:
                problems.append(f"v{number}: manifest is corrupt")
                continue
            for filename, what in self.check_files(version).items():
                problems.append(f"v{number}: {filename} is {what}")
        prefix = self._aliases_prefix(name)
        for key in self.store.list(prefix):
            alias = key[len(prefix) :].removesuffix(".json")
            try:
                target = self._alias_target(key, self.store.get_bytes(key))
            except RegistryError:
                problems.append(f"alias {alias} is corrupt")
                continue
            except ObjectNotFound:
                continue
            if target not in numbers:
                problems.append(f"alias {alias} names version {target}, which does not exist")
        return problems

    def download(self, version: ModelVersion, folder: Path) -> Path:
        """Write every file of ``version`` into ``folder`` (created); returns the folder."""
        folder = Path(folder)
        for filename, ref in version.files.items():
            path = self.store.get_file(blob_key(ref.sha256), folder / filename)
            if file_sha256(path) != ref.sha256:
                raise StorageError(f"{filename} of {version.name} v{version.version} is corrupt")
        return folder
