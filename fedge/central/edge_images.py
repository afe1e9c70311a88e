"""Images on the device: reading image files as model inputs and drawing a detector's
boxes on them (Pillow, imported only when used, so that :mod:`fedge.central.edge` loads
without it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedge.errors import DataError
from fedge.images import read_image

__all__ = [
    "IMAGE_SUFFIXES",
    "check_image",
    "draw_detections",
    "load_image",
    "one_line",
    "pixel_box",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (libraries' messages may span several)."""
    return " ".join(str(exc).split())


def load_image(path: Path) -> np.ndarray:
    """An 8-bit grayscale (L) or RGB image file as float32 ``(C, H, W)``, pixels divided by
    255 into [0, 1]: how :func:`fedge.data.detection.load_coco` turns training images into
    tensors. Other modes (alpha, palette, 16-bit, CMYK) are refused, as in training."""
    pixels = read_image(path, str(path))
    return pixels.astype(np.float32) / 255.0


def check_image(path: Path, image: np.ndarray, input_shape: Sequence[int]) -> None:
    """A :class:`DataError` naming both shapes unless the image read from ``path``
    (``(C, H, W)``, :func:`load_image`) has the model's ``input_shape``."""
    if tuple(image.shape) != tuple(input_shape):
        c, h, w = image.shape
        raise DataError(
            f"{path} is a {w}x{h} image with {c} channel{'s' if c > 1 else ''}, shape "
            f"(C, H, W) = {list(image.shape)}; the model expects {list(input_shape)} "
            "(channels: 1 grayscale, 3 RGB)"
        )


def pixel_box(row: np.ndarray, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The outermost pixels a detection's box touches in an image of ``image_size``
    ``(height, width)``: ``(left, top, right, bottom)``, inclusive. A row's corners
    ``[_, _, xmin, ymin, xmax, ymax]`` in [0, 1] cover columns ``floor(xmin·W)`` to
    ``ceil(xmax·W) − 1`` (at least one), rows likewise; :func:`draw_detections` draws the
    outline on them."""
    height, width = image_size
    x0, y0, x1, y1 = (float(v) for v in row[2:6])
    left = min(math.floor(x0 * width), width - 1)
    top = min(math.floor(y0 * height), height - 1)
    right = min(max(math.ceil(x1 * width) - 1, left), width - 1)
    bottom = min(max(math.ceil(y1 * height) - 1, top), height - 1)
    return left, top, right, bottom


# Ten distinct colours (Trubetskoy's), none grey: an outline differs from every pixel of
# a grayscale image.
_COLOURS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def draw_detections(
    image: np.ndarray,
    rows: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    labels: bool = True,
) -> Any:
    """The image with its detections drawn, as an RGB ``PIL.Image`` of the image's size.

    Parameters
    ----------
    image:
        ``(C, H, W)`` with C 1 (grayscale) or 3 (RGB), values in [0, 1] (as the model
        takes it); drawn as ``round(255·x)``.
    rows:
        ``(n, 6)`` detection rows ``[class, score, xmin, ymin, xmax, ymax]``, corners in
        [0, 1] (:class:`Detections`).
    names:
        Class names (default ``class <index>``).
    labels:
        Also write ``name score`` in a filled box above each box's top-left corner (inside
        it when there is no room above); default true.

    Each box is a one-pixel outline on :func:`pixel_box`'s pixels, in its class's colour.
    Labels are drawn first and outlines over them, lowest score first, so every outline
    stays whole and the best box is on top.
    """
    from PIL import Image, ImageDraw, ImageFont

    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise DataError(f"can draw (C, H, W) images with 1 or 3 channels, got {list(x.shape)}")
    pixels = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    if x.shape[0] == 1:
        picture = Image.fromarray(pixels[0], "L").convert("RGB")
    else:
        picture = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB")
    size = (int(x.shape[1]), int(x.shape[2]))
    draw = ImageDraw.Draw(picture)
    order = np.asarray(rows, dtype=np.float32).reshape(-1, 6)[::-1]
    if labels:
        font = ImageFont.load_default()
        for row in order:
            cls = int(row[0])
            name = names[cls] if names is not None and 0 <= cls < len(names) else f"class {cls}"
            text = f"{name} {row[1]:.2f}"
            left, top, _, _ = pixel_box(row, size)
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            tw, th = x1 - x0 + 2, y1 - y0 + 2  # one pixel of margin each side
            tx = max(0, min(left, size[1] - tw))
            ty = top - th if top >= th else max(0, min(top + 1, size[0] - th))
            colour = _COLOURS[cls % len(_COLOURS)]
            ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
            draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=colour)
            draw.text((tx + 1 - x0, ty + 1 - y0), text, fill=ink, font=font)
    for row in order:
        draw.rectangle(pixel_box(row, size), outline=_COLOURS[int(row[0]) % len(_COLOURS)])
    return picture
