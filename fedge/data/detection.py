"""Detection data: images with boxes, read from and written to the COCO format.

A COCO annotation file (Lin et al., ECCV 2014; what labelling tools export) is JSON::

    {"images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 96}, ...],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                      "bbox": [x, y, width, height], "iscrowd": 0}, ...],
     "categories": [{"id": 3, "name": "dress"}, ...]}

with ``bbox`` in pixels from the image's top-left corner. Images are files (PNG, JPEG, any
format Pillow reads) in a folder, named by ``file_name``. Everything is checked before a
dataset is returned, and a problem raises :class:`~fedge.errors.DataError` naming the
image or annotation: unreadable or corrupt files, images whose size differs from the
annotation file's or from the rest, channel counts other than 1 (grayscale) or 3 (RGB),
boxes outside the image, unknown images or categories.

Categories become class indices ``0 .. K-1`` in the order of their ids. Crowd
annotations (``iscrowd: 1``, COCO's regions of many objects) are skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.errors import DataError
from fedge.images import read_image

__all__ = [
    "ANNOTATIONS_FILE",
    "IMAGES_DIR",
    "DetectionDataset",
    "dominant_classes",
    "load_coco",
    "pad_boxes",
    "write_coco",
]

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
# Labelling tools round box corners outward; a box may overhang the image by this many
# pixels and is clipped to it. More than that is an error in the annotations.
EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class DetectionDataset:
    """Images and their boxes as two tensors, indexed together like
    :class:`~fedge.data.dataset.ArrayDataset`.

    ``x`` is float32 ``(N, C, H, W)`` in [0, 1]; ``y`` is float32 ``(N, M, 5)``: per image
    up to ``M`` rows ``[class, xmin, ymin, xmax, ymax]`` in pixels, padded with rows of
    class −1 (the layout :class:`fedge.tasks.Detection` trains on). ``categories`` names
    the classes; ``file_names`` the images (for writing them back).
    """

    x: torch.Tensor
    y: torch.Tensor
    categories: tuple[str, ...]
    file_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or not self.x.is_floating_point():
            raise DataError(f"images must be float (N, C, H, W), got {tuple(self.x.shape)}")
        if self.y.ndim != 3 or self.y.shape[2] != 5 or self.y.shape[0] != self.x.shape[0]:
            raise DataError(
                f"boxes must be (N, M, 5) for {self.x.shape[0]} images, got {tuple(self.y.shape)}"
            )
        if self.file_names is not None and len(self.file_names) != len(self):
            raise DataError(f"{len(self.file_names)} file names for {len(self)} images")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def boxes(self, i: int) -> np.ndarray:
        """Image ``i``'s rows ``[class, xmin, ymin, xmax, ymax]`` without padding."""
        rows = self.y[i].numpy()
        return rows[rows[:, 0] >= 0]

    def subset(self, indices: np.ndarray | torch.Tensor | Sequence[int]) -> DetectionDataset:
        """Images at ``indices`` (a copy)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        names = None
        if self.file_names is not None:
            names = tuple(self.file_names[i] for i in idx.tolist())
        return DetectionDataset(self.x[idx], self.y[idx], self.categories, names)


def dominant_classes(boxes: torch.Tensor) -> np.ndarray:
    """Per image the class of its largest box (by area; the first on a tie), −1 for an
    image without boxes: the label a partitioner splits detection data by.

    ``boxes`` is a padded ``(N, M, 5)`` tensor of rows ``[class, xmin, ymin, xmax, ymax]``.
    """
    rows = boxes.detach().to(torch.float64)
    area = (rows[..., 3] - rows[..., 1]) * (rows[..., 4] - rows[..., 2])
    area = torch.where(rows[..., 0] >= 0, area, torch.full_like(area, -1.0))
    if rows.shape[1] == 0:
        return np.full(rows.shape[0], -1, dtype=np.int64)
    largest = area.argmax(dim=1, keepdim=True)
    classes = rows[..., 0].gather(1, largest).squeeze(1).to(torch.int64)
    return classes.numpy()


def pad_boxes(per_image: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack per-image ``(n_i, 5)`` box rows into ``(N, max n_i, 5)`` (at least one row),
    padding with class −1."""
    m = max([1, *(len(rows) for rows in per_image)])
    y = np.zeros((len(per_image), m, 5), dtype=np.float32)
    y[:, :, 0] = -1
    for i, rows in enumerate(per_image):
        if len(rows):
            y[i, : len(rows)] = rows
    return torch.from_numpy(y)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"COCO annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"COCO annotation file {path} is not readable JSON: {exc}") from None


def _records(doc: Any, key: str, fields: dict[str, type | tuple[type, ...]], path: Path) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise DataError(f"{path} is not a COCO annotation file: it needs a {key!r} list")
    records = doc[key]
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {key}[{i}] is not an object")
        for field, kind in fields.items():
            value = record.get(field)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataError(f"{path}: {key}[{i}] needs {field!r} of type {kind}, got {value!r}")
    return records


def _unique(records: list, key: str, path: Path) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    for record in records:
        if record["id"] in by_id:
            raise DataError(f"{path}: two {key} have id {record['id']}")
        by_id[record["id"]] = record
    return by_id


def _read_image(path: Path, record: dict) -> np.ndarray:
    """The image as uint8 ``(C, H, W)``, checked against its record."""
    name = record["file_name"]
    array = read_image(path, f"image {name!r}")
    size = (array.shape[2], array.shape[1])
    if size != (record["width"], record["height"]):
        raise DataError(
            f"image {name!r} is {size[0]}x{size[1]} pixels but the annotation file says "
            f"{record['width']}x{record['height']}"
        )
    return array


def load_coco(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    input_shape: Sequence[int] | None = None,
) -> DetectionDataset:
    """Read a COCO annotation file and its images.

    Parameters
    ----------
    annotations:
        The JSON file.
    images:
        Folder of the images; default the ``images/`` folder beside the file (the layout
        :func:`write_coco` writes).
    input_shape:
        ``(C, H, W)`` every image must have (a model's input); default: that of the first
        image, which every other must share.

    Raises
    ------
    DataError
        Naming the first problem found (see the module docstring).
    """
    path = Path(annotations)
    folder = Path(images) if images is not None else path.parent / IMAGES_DIR
    doc = _read_json(path)
    categories = _unique(
        _records(doc, "categories", {"id": int, "name": str}, path), "categories", path
    )
    image_records = _unique(
        _records(doc, "images", {"id": int, "file_name": str, "width": int, "height": int}, path),
        "images",
        path,
    )
    class_of = {cat_id: i for i, cat_id in enumerate(sorted(categories))}
    per_image: dict[int, list[list[float]]] = {image_id: [] for image_id in image_records}
    for i, ann in enumerate(
        _records(doc, "annotations", {"image_id": int, "category_id": int}, path)
    ):
        where = f"{path}: annotation {ann.get('id', f'#{i}')}"
        if ann.get("iscrowd", 0):
            continue
        record = image_records.get(ann["image_id"])
        if record is None:
            raise DataError(f"{where} names unknown image id {ann['image_id']}")
        if ann["category_id"] not in class_of:
            known = ", ".join(str(c) for c in sorted(class_of))
            raise DataError(
                f"{where} has unknown category {ann['category_id']} (categories: {known})"
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            or not all(math.isfinite(v) for v in bbox)
        ):
            raise DataError(
                f"{where} needs 'bbox' [x, y, width, height] of 4 numbers, got {bbox!r}"
            )
        x, y, w, h = (float(v) for v in bbox)
        width, height = record["width"], record["height"]
        if w <= 0 or h <= 0:
            raise DataError(f"{where} has an empty box {bbox} (width and height must be > 0)")
        tol = EDGE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise DataError(
                f"{where} has box {bbox} outside its {width}x{height} image {record['file_name']!r}"
            )
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        per_image[ann["image_id"]].append([class_of[ann["category_id"]], x0, y0, x1, y1])
    order = sorted(image_records)
    if not order:
        raise DataError(f"{path} lists no images")
    arrays = []
    expected = tuple(input_shape) if input_shape is not None else None
    for image_id in order:
        record = image_records[image_id]
        relative = Path(record["file_name"])
        if relative.is_absolute() or ".." in relative.parts:
            raise DataError(
                f"{path}: image {image_id} has file_name {record['file_name']!r}; names must "
                "be relative to the image folder"
            )
        array = _read_image(folder / relative, record)
        if expected is None:
            expected = array.shape
        if array.shape != expected:
            raise DataError(
                f"image {record['file_name']!r} has shape (C, H, W) = {list(array.shape)}, "
                f"expected {list(expected)}"
                + (" (channels: 1 grayscale, 3 RGB)" if array.shape[0] != expected[0] else "")
            )
        arrays.append(array)
    x = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)
    boxes = [np.asarray(per_image[i], dtype=np.float32).reshape(-1, 5) for i in order]
    return DetectionDataset(
        x,
        pad_boxes(boxes),
        tuple(categories[c]["name"] for c in sorted(categories)),
        tuple(image_records[i]["file_name"] for i in order),
    )


def write_coco(dataset: DetectionDataset, folder: str | Path) -> Path:
    """Write ``dataset`` as ``folder/annotations.json`` and ``folder/images/*.png``.

    Pixels are stored as 8-bit PNG (``round(255·x)``: lossless for images read from
    8-bit files); categories get ids ``1 .. K``, images ids ``1 .. N``. The files are
    written into a temporary folder beside ``folder`` and moved into place at the end,
    so an interrupted write leaves no half-written dataset. ``folder`` must not exist yet.
    Returns the annotation file's path.
    """
    from PIL import Image

    final = Path(folder)
    if final.exists():
        raise DataError(f"{final} already exists; write a COCO dataset into a new folder")
    channels = dataset.x.shape[1]
    if channels not in (1, 3):
        raise DataError(f"only 1- or 3-channel images can be written, got {channels}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        (tmp / IMAGES_DIR).mkdir()
        pixels = (dataset.x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        names = dataset.file_names or tuple(f"{i:06d}.png" for i in range(len(dataset)))
        images, annotations = [], []
        for i, (name, image) in enumerate(zip(names, pixels, strict=True)):
            array = image[0] if channels == 1 else image.transpose(1, 2, 0)
            Image.fromarray(array, "L" if channels == 1 else "RGB").save(
                tmp / IMAGES_DIR / name, format="PNG"
            )
            images.append(
                {"id": i + 1, "file_name": name, "width": image.shape[2], "height": image.shape[1]}
            )
            for cls, x0, y0, x1, y1 in dataset.boxes(i).tolist():
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": int(cls) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": c + 1, "name": n} for c, n in enumerate(dataset.categories)]
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (tmp / ANNOTATIONS_FILE).write_text(json.dumps(doc))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return final / ANNOTATIONS_FILE
