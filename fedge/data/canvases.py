"""Synthetic detection data: Fashion-MNIST items placed on larger canvases.

Each canvas (default 96×96, one channel) holds 1 to ``max_items`` items drawn at random
from a Fashion-MNIST split, each scaled by a random factor (bilinear, Pillow) and placed at
a random position, fully inside. Items may overlap: a placement is kept when its box's IoU
with every box already placed is at most ``max_overlap`` (default 0.3), and overlapping
pixels take the brighter value, so both items stay partly visible. Up to 20 placements
are tried per item; an item that finds no place is left out, so a canvas can hold fewer
than drawn. Boxes are tight: they span the item's non-zero pixels after scaling, not the
28×28 tile. Everything depends only on ``seed`` (one ``numpy`` generator, used in a fixed
order).

Use the training split's items for training canvases and the test split's for held-out
ones (:func:`fashion_mnist_canvases`), so that held-out canvases show unseen items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedge.data.detection import DetectionDataset, pad_boxes
from fedge.errors import ConfigError, DataError
from fedge.tasks.boxes import box_iou

__all__ = ["FASHION_MNIST_CLASSES", "CanvasConfig", "fashion_mnist_canvases", "make_canvases"]

FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_ATTEMPTS = 20


@dataclass(frozen=True)
class CanvasConfig:
    """How canvases are composed (see the module docstring); sizes in pixels."""

    size: int = 96
    max_items: int = 4
    min_scale: float = 0.8
    max_scale: float = 1.8
    max_overlap: float = 0.3

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ConfigError(f"max_items must be >= 1, got {self.max_items}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, "
                              f"{self.max_scale}")  # fmt: skip
        if round(28 * self.max_scale) > self.size:
            raise ConfigError(
                f"items scaled by up to {self.max_scale} ({round(28 * self.max_scale)} px) do "
                f"not fit a {self.size}-pixel canvas"
            )
        if not 0 <= self.max_overlap <= 1:
            raise ConfigError(f"max_overlap must be in [0, 1], got {self.max_overlap}")


def _scaled(item: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))


def make_canvases(
    n: int,
    items: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int | Sequence[int],
    config: CanvasConfig = CanvasConfig(),
    categories: tuple[str, ...] = FASHION_MNIST_CLASSES,
) -> DetectionDataset:
    """``n`` canvases composed of ``items`` (uint8 ``(N, 28, 28)``) of class ``labels``.

    Returns a :class:`~fedge.data.detection.DetectionDataset` with ``x`` of shape
    ``(n, 1, size, size)`` in [0, 1] and boxes in pixels.
    """
    if items.dtype != np.uint8 or items.ndim != 3:
        raise DataError(f"items must be uint8 (N, H, W), got {items.dtype} {items.shape}")
    rng = np.random.default_rng(seed)
    s = config.size
    canvases = np.zeros((n, s, s), dtype=np.uint8)
    per_canvas = []
    for c in range(n):
        rows: list[list[float]] = []
        for _ in range(int(rng.integers(1, config.max_items + 1))):
            for _attempt in range(_ATTEMPTS):
                index = int(rng.integers(len(items)))
                side = round(items.shape[1] * rng.uniform(config.min_scale, config.max_scale))
                scaled = _scaled(items[index], side)
                ys, xs = np.nonzero(scaled)
                if len(ys) == 0:
                    break
                piece = scaled[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
                h, w = piece.shape
                x0, y0 = int(rng.integers(s - w + 1)), int(rng.integers(s - h + 1))
                box = np.array([[x0, y0, x0 + w, y0 + h]], dtype=np.float64)
                placed = np.array([r[1:] for r in rows]).reshape(-1, 4)
                if len(placed) and box_iou(box, placed).max() > config.max_overlap:
                    continue
                region = canvases[c, y0 : y0 + h, x0 : x0 + w]
                np.maximum(region, piece, out=region)
                rows.append([float(labels[index]), x0, y0, x0 + w, y0 + h])
                break
        per_canvas.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    x = torch.from_numpy(canvases.astype(np.float32)[:, None] / 255.0)
    names = tuple(f"{i:06d}.png" for i in range(n))
    return DetectionDataset(x, pad_boxes(per_canvas), categories, names)


def fashion_mnist_canvases(
    num_train: int,
    num_test: int,
    *,
    seed: int = 0,
    config: CanvasConfig = CanvasConfig(),
    data_dir: str | Path | None = None,
) -> tuple[DetectionDataset, DetectionDataset]:
    """Training canvases of Fashion-MNIST training items and held-out canvases of its test
    items (found as :func:`fedge.data.fashion_mnist.load_fashion_mnist` finds them)."""
    from fedge.data.fashion_mnist import load_fashion_mnist

    data = load_fashion_mnist(data_dir)

    def uint8(images: torch.Tensor) -> np.ndarray:
        return (images[:, 0] * 255).round().to(torch.uint8).numpy()

    train = make_canvases(
        num_train, uint8(data.train.x), data.train.y.numpy(), seed=(seed, 0), config=config
    )
    test = make_canvases(
        num_test, uint8(data.test.x), data.test.y.numpy(), seed=(seed, 1), config=config
    )
    return train, test
