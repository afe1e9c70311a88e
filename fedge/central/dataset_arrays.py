"""Dataset arrays in memory and on disk: the type uploads take, the checks every split
passes, and the ``.npz`` format of the store's blobs and of samples sent by devices.

An ``.npz`` holds ``x`` and ``y`` (training examples and labels) and optionally
``x_test`` and ``y_test``. The store's copy is written byte for byte the same for the same
arrays (fixed zip timestamps, no compression), so that its content hash names the data.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedge.central.npfile import read_npz as load_npz
from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.errors import DataError

__all__ = ["DatasetArrays", "check_split", "read_npz", "write_npz"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class DatasetArrays:
    """The arrays of one dataset version (or of new samples to append).

    ``x_test`` and ``y_test`` are both present or both ``None``.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 28, 28)``."""
        return tuple(self.x.shape[1:])

    @classmethod
    def from_data(cls, data: FederatedData) -> DatasetArrays:
        """The train and test sets of a loaded dataset (e.g. from :func:`load_data`)."""
        return cls(
            x=data.train.x.numpy(),
            y=data.train.y.numpy(),
            num_classes=data.num_classes,
            x_test=data.test.x.numpy(),
            y_test=data.test.y.numpy(),
        )

    def to_data(self, name: str) -> FederatedData:
        """As a :class:`FederatedData` (no natural partition); an absent test split is
        empty."""
        x_test = self.x_test if self.x_test is not None else self.x[:0]
        y_test = self.y_test if self.y_test is not None else self.y[:0]
        return FederatedData(
            name=name,
            train=ArrayDataset(torch.from_numpy(self.x), torch.from_numpy(self.y)),
            test=ArrayDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
            num_classes=self.num_classes,
        )


def check_split(
    x: np.ndarray, y: np.ndarray, num_classes: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` with int64 labels, or raise :class:`DataError` naming the fault."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or 0 in x.shape[1:] or y.ndim != 1:
        raise DataError(
            f"{what}: features must have shape (N, *example_shape) and labels (N,), "
            f"got x {list(x.shape)} and y {list(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} examples but {y.shape[0]} labels")
    if x.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DataError(f"{what}: {bad} feature values are NaN or infinite")
    elif x.dtype != np.int64:
        raise DataError(f"{what}: features must be float or int64 token ids, got {x.dtype}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers, got {y.dtype}")
    if y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise DataError(f"{what}: labels must lie in 0..{num_classes - 1}, found {low}..{high}")
    return x, y.astype(np.int64, copy=False)


def read_npz(path: Path, *, num_classes: int | None = None) -> DatasetArrays:
    """Read new samples from an ``.npz`` file with arrays ``x`` and ``y`` (and optionally
    ``x_test`` and ``y_test``).

    ``num_classes`` defaults to ``max(label) + 1`` over both splits; when appending, the
    parent's number of classes is used instead. Object (pickled) arrays are refused.
    """
    path = Path(path)
    arrays = load_npz(path)
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {', '.join(missing)} (has: {', '.join(arrays) or 'none'})"
        )
    unknown = sorted(set(arrays) - {"x", "y", "x_test", "y_test"})
    if unknown:
        raise DataError(f"{path} holds unexpected arrays: {', '.join(unknown)}")
    if num_classes is None:
        labels = [arrays[k] for k in ("y", "y_test") if k in arrays and arrays[k].size]
        if not labels or any(lab.dtype.kind not in "iu" for lab in labels):
            raise DataError(f"{path}: labels must be integers (and at least one is needed)")
        num_classes = max(int(lab.max()) for lab in labels) + 1
    return DatasetArrays(
        x=arrays["x"],
        y=arrays["y"],
        num_classes=num_classes,
        x_test=arrays.get("x_test"),
        y_test=arrays.get("y_test"),
    )


def write_npz(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """An uncompressed ``.npz`` whose bytes depend only on the arrays (numpy's ``savez``
    stamps the current time into every zip entry, which would defeat content hashing)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
