"""Datasets in the object store: immutable numbered versions, appendable with new samples.

A dataset version is one content-addressed ``.npz`` blob and a small JSON manifest::

    datasets/<name>/versions/<n>.json    manifest of version n: created once, never rewritten
    blobs/sha256/<hex>                   the arrays, by content

The blob holds ``x`` and ``y`` (the training examples) and, when the source has one, a
fixed test split ``x_test`` and ``y_test``. ``x`` is float (images scaled to [0, 1]) or
int64 token ids, shaped ``(N, *input_shape)``; ``y`` holds int64 labels in
``0 .. num_classes-1``, or for a detection dataset (manifest ``task = "detection"``)
float32 boxes ``(N, M, 5)`` ``[class, xmin, ymin, xmax, ymax]`` in pixels padded with
class −1, checked to lie inside the images. The ``.npz`` is written byte for byte the
same for the same arrays (fixed zip timestamps, no compression), so uploading the same
data twice stores it once.

Devices add data by appending: a new version is its parent's arrays followed by the new
samples (training samples to ``x``/``y``, test samples, if any, to the test split). The
new samples must match the parent's example shape and dtypes and its label range; every
upload refuses non-finite features, labels out of range and mismatched lengths before
anything is written. Version numbers are allocated as in the model registry: the manifest
of ``max + 1`` is created with the store's create-if-absent write. An append that loses
that race re-reads the newest version and merges its samples onto it, so appends never
branch and every accepted sample is in every later version, on a folder and on S3 alike.
A version is referred to as ``name@n`` (:attr:`ref`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from fedge.central.dataset_arrays import (
    DatasetArrays,
    TaskKind,
    check_boxes,
    check_split,
    read_npz,
    write_npz,
)
from fedge.central.npfile import read_npz as load_npz
from fedge.central.scratch import scratch_dir
from fedge.central.storage.base import ObjectStore, blob_key, file_sha256
from fedge.central.versions import (
    MAX_ATTEMPTS,
    create_next_version,
    parse_version,
    version_numbers,
)
from fedge.errors import DataError, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from fedge.data.dataset import FederatedData

__all__ = [
    "DatasetArrays",
    "DatasetStore",
    "DatasetVersion",
    "SplitInfo",
    "parse_dataset_ref",
    "read_npz",
    "validate",
]

LATEST = "latest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class SplitInfo(BaseModel):
    """Shapes and dtypes of one split as stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x_shape: list[NonNegativeInt]
    x_dtype: str
    y_shape: list[NonNegativeInt]
    y_dtype: str
    class_counts: list[NonNegativeInt] = Field(
        description="examples per class; for detection data, boxes per class"
    )


class DatasetVersion(BaseModel):
    """The manifest of one dataset version (immutable once created)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = 1
    name: str
    version: PositiveInt
    created_at: datetime
    sha256: str
    size: NonNegativeInt
    num_classes: PositiveInt
    input_shape: list[PositiveInt]
    train: SplitInfo
    test: SplitInfo | None = None
    parent: PositiveInt | None = None
    appended: NonNegativeInt | None = None
    source: str | None = None
    task: TaskKind = "classification"
    categories: list[str] | None = None

    @property
    def ref(self) -> str:
        """``name@version``, the string training jobs and the model registry record."""
        return f"{self.name}@{self.version}"

    @property
    def num_train(self) -> int:
        return self.train.x_shape[0]

    @property
    def num_test(self) -> int:
        return self.test.x_shape[0] if self.test is not None else 0


def parse_dataset_ref(text: str) -> tuple[str, str]:
    """Split ``name@version`` (or a bare ``name``, meaning the latest) into its parts."""
    name, _, version = text.partition("@")
    return name, version or LATEST


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DataError(
            f"invalid dataset name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate(arrays: DatasetArrays, parent: DatasetVersion | None = None) -> DatasetArrays:
    """Check ``arrays`` (and, when appending, their fit to ``parent``); labels become int64.

    Raises :class:`DataError` for mismatched lengths, non-finite features, labels out of
    range, a test split without its other half, and, against a parent, a different example
    shape or feature dtype.
    """
    if arrays.num_classes < 1:
        raise DataError(f"the number of classes must be positive, got {arrays.num_classes}")
    if (arrays.x_test is None) != (arrays.y_test is None):
        raise DataError("a test split needs both x_test and y_test")
    if arrays.categories is not None and len(arrays.categories) != arrays.num_classes:
        raise DataError(f"{len(arrays.categories)} category names for {arrays.num_classes} classes")
    if parent is not None and arrays.task != parent.task:
        raise DataError(f"{parent.ref} holds {parent.task} data, the new samples {arrays.task}")
    check = check_boxes if arrays.task == "detection" else check_split
    what = "new samples" if parent is not None else "training split"
    x, y = check(arrays.x, arrays.y, arrays.num_classes, what)
    x_test, y_test = arrays.x_test, arrays.y_test
    if x_test is not None and y_test is not None:
        what = "new test samples" if parent is not None else "test split"
        x_test, y_test = check(x_test, y_test, arrays.num_classes, what)
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            raise DataError(
                f"test examples are {x_test.dtype} {list(x_test.shape[1:])}, training "
                f"examples {x.dtype} {list(x.shape[1:])}"
            )
    if parent is not None:
        if list(x.shape[1:]) != parent.input_shape or str(x.dtype) != parent.train.x_dtype:
            raise DataError(
                f"new samples are {x.dtype} with example shape {list(x.shape[1:])}, but "
                f"{parent.ref} holds {parent.train.x_dtype} {parent.input_shape}"
            )
        if x.shape[0] == 0 and (y_test is None or y_test.shape[0] == 0):
            raise DataError("no new samples to append")
    elif x.shape[0] == 0:
        raise DataError("a dataset needs at least one training example")
    return DatasetArrays(x, y, arrays.num_classes, x_test, y_test, arrays.task, arrays.categories)


def _split_info(x: np.ndarray, y: np.ndarray, num_classes: int) -> SplitInfo:
    labels = y if y.ndim == 1 else y[..., 0][y[..., 0] >= 0].astype(np.int64)
    return SplitInfo(
        x_shape=list(x.shape),
        x_dtype=str(x.dtype),
        y_shape=list(y.shape),
        y_dtype=str(y.dtype),
        class_counts=np.bincount(labels, minlength=num_classes).tolist(),
    )


def _concat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` followed by ``b``; boxes ``(N, M, 5)`` are first padded (class −1) to the
    larger ``M``."""
    if a.ndim == 3 and b.ndim == 3 and a.shape[1] != b.shape[1]:
        m = max(a.shape[1], b.shape[1])

        def pad(boxes: np.ndarray) -> np.ndarray:
            out = np.zeros((len(boxes), m, 5), dtype=boxes.dtype)
            out[..., 0] = -1
            out[:, : boxes.shape[1]] = boxes
            return out

        a, b = pad(a), pad(b)
    return np.concatenate([a, b])


class DatasetStore:
    """Versioned datasets kept in an object store.

    Parameters
    ----------
    store:
        The object store (a folder or an S3 prefix); it can hold the model registry too.
    """

    def __init__(self, store: ObjectStore):
        self.store = store

    def _prefix(self, name: str) -> str:
        return f"datasets/{_check_name(name)}/versions/"

    def version_numbers(self, name: str) -> list[int]:
        """Version numbers of ``name``, ascending (empty for an unknown dataset)."""
        return version_numbers(self.store, self._prefix(name))

    def list_datasets(self) -> list[str]:
        """Names of all datasets with at least one version, sorted."""
        names = set()
        for key in self.store.list("datasets/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[2] == "versions":
                names.add(parts[1])
        return sorted(names)

    def _unknown(self, name: str) -> DataError:
        known = self.list_datasets()
        hint = f"datasets: {', '.join(known)}" if known else "no datasets uploaded yet"
        return DataError(f"unknown dataset {name!r} in {self.store.url} ({hint})")

    def versions(self, name: str) -> list[DatasetVersion]:
        """Every version of ``name``, oldest first."""
        numbers = self.version_numbers(name)
        if not numbers:
            raise self._unknown(name)
        return [self._read(name, n) for n in numbers]

    def get(self, name: str, version: int | str | None = None) -> DatasetVersion:
        """Version ``version`` of ``name`` (a number, ``"3"``, or ``None``/``"latest"``)."""
        numbers = self.version_numbers(name)
        if not numbers:
            raise self._unknown(name)
        if version is None or version == LATEST:
            return self._read(name, numbers[-1])
        number = version if isinstance(version, int) else parse_version(version)
        if number is None:
            raise DataError(f"a dataset version is a number or 'latest', got {version!r}")
        if number not in numbers:
            raise DataError(
                f"dataset {name!r} has no version {number} "
                f"(versions: {', '.join(map(str, numbers))})"
            )
        return self._read(name, number)

    def _read(self, name: str, number: int) -> DatasetVersion:
        key = f"{self._prefix(name)}{number}.json"
        try:
            return DatasetVersion.model_validate_json(self.store.get_bytes(key))
        except ValidationError as exc:
            raise DataError(f"manifest {key} in {self.store.url} is corrupt: {exc}") from None

    def load(self, version: DatasetVersion) -> DatasetArrays:
        """The arrays of ``version``, checked against its content hash."""
        with scratch_dir("dataset") as tmp:
            path = tmp / "data.npz"
            try:
                self.store.get_file(blob_key(version.sha256), path)
            except ObjectNotFound:
                raise DataError(f"the arrays of {version.ref} are missing from the store") from None
            if file_sha256(path) != version.sha256:
                raise StorageError(f"the arrays of {version.ref} are corrupt: their hash differs")
            arrays = load_npz(path)
        return DatasetArrays(
            x=arrays["x"],
            y=arrays["y"],
            num_classes=version.num_classes,
            x_test=arrays.get("x_test"),
            y_test=arrays.get("y_test"),
            task=version.task,
            categories=tuple(version.categories) if version.categories is not None else None,
        )

    def load_data(self, version: DatasetVersion) -> FederatedData:
        """``version`` as a :class:`FederatedData`, ready for training (classification
        data only: a detection version loads with :meth:`load` and
        :meth:`DatasetArrays.to_detection`)."""
        if version.task != "classification":
            raise DataError(
                f"{version.ref} holds {version.task} data (images and boxes), not class "
                "labels: train it with a detector model (fedge train, fedge simulate)"
            )
        return self.load(version).to_data(version.ref)

    def upload(
        self, name: str, arrays: DatasetArrays, *, source: str | None = None
    ) -> DatasetVersion:
        """Store ``arrays`` as the next version of ``name`` (creating the dataset if new).

        Parameters
        ----------
        name:
            Dataset name: 1-100 letters, digits, ``.``, ``_`` or ``-``.
        arrays:
            The whole dataset (validated first: see :func:`validate`).
        source:
            Where the data came from, recorded in the manifest.
        """
        _check_name(name)
        return self._commit(name, validate(arrays), source=source)

    def append(
        self,
        name: str,
        new: DatasetArrays,
        *,
        parent: int | str | None = None,
        source: str | None = None,
        create: bool = False,
    ) -> DatasetVersion:
        """Store the newest version of ``name`` followed by the samples ``new`` as the next
        version; the parent stays as it was.

        Appends never branch: the new version is always written on top of the newest one,
        so every accepted sample is in every later version. Two concurrent appends both
        try to create version ``latest + 1`` with the store's create-if-absent write; the
        one that loses re-reads the new newest version and merges its samples onto that.

        Parameters
        ----------
        parent:
            The version the caller expects to be the newest (a number or ``"latest"``);
            a :class:`DataError` if it is not, since a version built on an older one would
            leave out the samples added since. ``None`` (default): whatever is newest.
        create:
            Start the dataset with ``new`` when it has no version yet (``new.num_classes``
            then gives the classes) instead of refusing an unknown dataset.
        """
        numbers = self.version_numbers(name)
        if parent is not None and parent != LATEST and numbers:
            expected = self.get(name, parent).version
            if expected != numbers[-1]:
                raise DataError(
                    f"version {expected} of dataset {name!r} is not its newest "
                    f"({numbers[-1]}): append to the newest, so that no version leaves out "
                    "samples added before it"
                )
        for _ in range(MAX_ATTEMPTS):
            if not numbers:
                if not create:
                    raise self._unknown(name)
                created = self._try_commit(name, validate(new), 1, source=source)
                if created is not None:
                    return created
            else:
                base = self._read(name, numbers[-1])
                merged, appended = self._merged(base, new)
                created = self._try_commit(
                    name,
                    merged,
                    base.version + 1,
                    source=source,
                    parent=base.version,
                    appended=appended,
                )
                if created is not None:
                    return created
            numbers = self.version_numbers(name)  # lost a race: build on the new newest
        raise StorageError(f"no free version number for dataset {name!r}")

    def _merged(self, base: DatasetVersion, new: DatasetArrays) -> tuple[DatasetArrays, int]:
        """``base``'s arrays followed by ``new``'s (checked against ``base``), and how many
        samples that adds."""
        new = validate(
            DatasetArrays(
                new.x, new.y, base.num_classes, new.x_test, new.y_test, new.task, new.categories
            ),
            base,
        )
        old = self.load(base)
        x_test, y_test = old.x_test, old.y_test
        if new.x_test is not None and new.y_test is not None:
            if x_test is None or y_test is None:
                x_test, y_test = new.x_test, new.y_test
            else:
                x_test = np.concatenate([x_test, new.x_test])
                y_test = _concat(y_test, new.y_test)
        merged = DatasetArrays(
            x=np.concatenate([old.x, new.x]),
            y=_concat(old.y, new.y),
            num_classes=base.num_classes,
            x_test=x_test,
            y_test=y_test,
            task=old.task,
            categories=old.categories,
        )
        appended = len(new.y) + (len(new.y_test) if new.y_test is not None else 0)
        return merged, appended

    def _fields(
        self,
        name: str,
        arrays: DatasetArrays,
        *,
        source: str | None,
        parent: int | None = None,
        appended: int | None = None,
    ) -> dict[str, Any]:
        """Store ``arrays`` as a blob; the manifest fields of a version holding them."""
        contents = {"x": arrays.x, "y": arrays.y}
        test = None
        if arrays.x_test is not None and arrays.y_test is not None:
            contents |= {"x_test": arrays.x_test, "y_test": arrays.y_test}
            test = _split_info(arrays.x_test, arrays.y_test, arrays.num_classes)
        with scratch_dir("dataset") as tmp:
            path = tmp / "data.npz"
            write_npz(contents, path)
            digest = self.store.put_blob_file(path)
            size = path.stat().st_size
        return {
            "name": name,
            "sha256": digest,
            "size": size,
            "num_classes": arrays.num_classes,
            "input_shape": list(arrays.input_shape),
            "train": _split_info(arrays.x, arrays.y, arrays.num_classes),
            "test": test,
            "parent": parent,
            "appended": appended,
            "source": source,
            "task": arrays.task,
            "categories": list(arrays.categories) if arrays.categories is not None else None,
        }

    def _commit(self, name: str, arrays: DatasetArrays, *, source: str | None) -> DatasetVersion:
        """``arrays`` as the next free version number of ``name``."""
        fields = self._fields(name, arrays, source=source)
        version = create_next_version(
            self.store,
            self._prefix(name),
            lambda n: DatasetVersion(version=n, created_at=datetime.now(UTC), **fields),
        )
        if version is None:
            raise StorageError(f"no free version number for dataset {name!r}")
        return version

    def _try_commit(
        self, name: str, arrays: DatasetArrays, number: int, **fields: Any
    ) -> DatasetVersion | None:
        """``arrays`` as version ``number`` of ``name``, or ``None`` if a concurrent writer
        created that version first (the blob stays; it is content-addressed)."""
        manifest = DatasetVersion(
            version=number, created_at=datetime.now(UTC), **self._fields(name, arrays, **fields)
        )
        key = f"{self._prefix(name)}{number}.json"
        if self.store.put_if_absent(key, manifest.model_dump_json(indent=2).encode()):
            return manifest
        return None
