"""Dataset arrays in memory and on disk: the type uploads take, the checks every split
passes, and the ``.npz`` format of the store's blobs and of samples sent by devices.

An ``.npz`` holds ``x`` and ``y`` (training examples and labels) and optionally
``x_test`` and ``y_test``. For detection data ``y`` holds boxes instead of labels: float32
``(N, M, 5)`` rows ``[class, xmin, ymin, xmax, ymax]`` in pixels, padded with class −1
(the layout of :class:`fedge.data.detection.DetectionDataset`). The store's copy is
written byte for byte the same for the same arrays (fixed zip timestamps, no
compression), so that its content hash names the data.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedge.central.npfile import read_npz as load_npz
from fedge.errors import DataError

if TYPE_CHECKING:
    from fedge.data.dataset import FederatedData
    from fedge.data.detection import DetectionDataset

__all__ = ["DatasetArrays", "check_boxes", "check_split", "read_npz", "write_npz"]

TaskKind = Literal["classification", "detection"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class DatasetArrays:
    """The arrays of one dataset version (or of new samples to append).

    ``x_test`` and ``y_test`` are both present or both ``None``. ``task`` says what ``y``
    holds: class labels (``"classification"``, the default) or padded boxes
    (``"detection"``); ``categories`` optionally names the classes.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    task: TaskKind = "classification"
    categories: tuple[str, ...] | None = None

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

    @classmethod
    def from_detection(
        cls, train: DetectionDataset, test: DetectionDataset | None = None
    ) -> DatasetArrays:
        """The images and boxes of detection data (e.g. from :func:`load_detection_data`)."""
        return cls(
            x=train.x.numpy(),
            y=train.y.numpy(),
            num_classes=train.num_classes,
            x_test=test.x.numpy() if test is not None else None,
            y_test=test.y.numpy() if test is not None else None,
            task="detection",
            categories=tuple(train.categories),
        )

    def to_detection(self) -> tuple[DetectionDataset, DetectionDataset | None]:
        """Detection data as training and test :class:`DetectionDataset` (``None`` without a
        test split)."""
        import torch

        from fedge.data.detection import DetectionDataset

        if self.task != "detection":
            raise DataError(f"these arrays hold {self.task} labels, not boxes")
        names = self.categories or tuple(str(i) for i in range(self.num_classes))

        def dataset(x: np.ndarray, y: np.ndarray) -> DetectionDataset:
            return DetectionDataset(
                torch.from_numpy(x).to(torch.float32), torch.from_numpy(y), tuple(names)
            )

        test = None
        if self.x_test is not None and self.y_test is not None:
            test = dataset(self.x_test, self.y_test)
        return dataset(self.x, self.y), test

    def to_data(self, name: str) -> FederatedData:
        """As a :class:`FederatedData` (no natural partition); an absent test split is
        empty."""
        import torch  # the store itself (and so serving) needs no torch

        from fedge.data.dataset import ArrayDataset, FederatedData

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


def check_boxes(
    x: np.ndarray, y: np.ndarray, num_classes: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` of detection data with float32 boxes, or raise :class:`DataError`.

    ``x`` must be finite float images ``(N, C, H, W)``; ``y`` finite ``(N, M, 5)`` rows
    ``[class, xmin, ymin, xmax, ymax]`` whose class is an integer in ``0..num_classes-1``
    (or −1 for padding) and whose box lies inside the image with positive width and
    height.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or 0 in x.shape[1:] or x.dtype.kind != "f":
        raise DataError(
            f"{what}: detection images must be float (N, C, H, W), got {x.dtype} {list(x.shape)}"
        )
    if y.ndim != 3 or y.shape[2] != 5 or y.dtype.kind not in "fiu":
        raise DataError(
            f"{what}: boxes must be numbers shaped (N, M, 5) [class, xmin, ymin, xmax, ymax], "
            f"got {y.dtype} {list(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} images but boxes for {y.shape[0]}")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise DataError(f"{what}: {bad} pixel values are NaN or infinite")
    y = y.astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        image = int(np.argwhere(~np.isfinite(y))[0][0])
        raise DataError(f"{what}: image {image} has a box with NaN or infinite values")
    cls = y[..., 0]
    wrong = (cls != np.round(cls)) | (cls < -1) | (cls >= num_classes)
    if wrong.any():
        image, row = (int(i) for i in np.argwhere(wrong)[0])
        raise DataError(
            f"{what}: image {image} has a box of unknown class {float(cls[image, row]):g} "
            f"(classes are 0..{num_classes - 1}, -1 pads)"
        )
    height, width = x.shape[2], x.shape[3]
    x0, y0, x1, y1 = (y[..., k] for k in range(1, 5))
    outside = (cls >= 0) & (
        (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)
    )
    if outside.any():
        image, row = (int(i) for i in np.argwhere(outside)[0])
        box = [float(v) for v in y[image, row, 1:]]
        raise DataError(
            f"{what}: image {image} has box {box} outside its {width}x{height} pixels "
            "(or of zero size)"
        )
    return x, y


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
