"""Image files as arrays, with NumPy and Pillow only (no torch): what training data
(:func:`fedge.data.detection.load_coco`) and the edge app
(:func:`fedge.central.edge_images.load_image`) read, the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.errors import DataError

__all__ = ["IMAGE_MODES", "read_image"]

#: Pillow modes a model takes, and their channel counts.
IMAGE_MODES = {"L": 1, "RGB": 3}


def read_image(path: str | Path, name: str) -> np.ndarray:
    """The 8-bit grayscale (L) or RGB image file at ``path`` as uint8 ``(C, H, W)``.

    A missing, corrupt or unreadable file, or another mode (alpha, palette, 16-bit, CMYK),
    is a :class:`~fedge.errors.DataError` that calls the image ``name``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
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
