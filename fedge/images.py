"""Image files as arrays, with NumPy and Pillow only (no torch): what training data
(:func:`fedge.data.detection.load_coco`), the edge app
(:func:`fedge.central.edge_images.load_image`) and ``fedge serve``'s image requests read,
the same way."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fedge.errors import DataError

__all__ = ["IMAGE_MODES", "read_image"]

#: Pillow modes a model takes, and their channel counts.
IMAGE_MODES = {"L": 1, "RGB": 3}


def read_image(
    path: str | Path | bytes, name: str, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """The 8-bit grayscale (L) or RGB image file at ``path`` (or its bytes) as uint8
    ``(C, H, W)``.

    A missing, corrupt or unreadable file, or another mode (alpha, palette, 16-bit, CMYK),
    is a :class:`~fedge.errors.DataError` that calls the image ``name``. With ``size``
    ``(height, width)`` an image of another size is refused from its header, before its
    pixels are decoded (a small file can unpack to a huge image)."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(path) if isinstance(path, bytes) else path
    try:
        with Image.open(source) as image:
            if size is not None and image.size != (size[1], size[0]):
                width, height = image.size
                raise DataError(
                    f"{name} is {width}x{height} pixels; the model takes {size[1]}x{size[0]} "
                    "(width x height) images"
                )
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError:
        found = f"file not found: {path}" if name == str(path) else f"{name} not found at {path}"
        raise DataError(found) from None
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        message = " ".join(str(exc).split())
        raise DataError(f"{name} is corrupt or not an image: {message}") from None
    if mode not in IMAGE_MODES:
        raise DataError(f"{name} has mode {mode!r}: use 8-bit grayscale (L) or RGB images")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
