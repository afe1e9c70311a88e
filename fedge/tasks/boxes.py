"""Axis-aligned boxes in NumPy: conversions and intersection over union.

Two layouts: ``xywh`` is COCO's ``[x, y, width, height]`` (top-left corner and size),
``xyxy`` is ``[xmin, ymin, xmax, ymax]``. Coordinates are continuous: a box covering pixel
columns 3..5 is ``xmin = 3, xmax = 6`` (width 3), as in COCO, so areas and IoU have no
``+1`` terms. Arrays hold boxes in their last axis (``(..., 4)``). No torch: the edge app
and the server use these too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_area", "box_iou", "xywh_to_xyxy", "xyxy_to_xywh"]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[x, y, w, h]`` → ``[xmin, ymin, xmax, ymax]`` (float64 copy)."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[xmin, ymin, xmax, ymax]`` → ``[x, y, w, h]`` (float64 copy)."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], axis=-1)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``xyxy`` boxes; a box with ``xmax < xmin`` (or ``ymax < ymin``) has area 0."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``xyxy`` boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``: ``(N, M)``.

    Two empty boxes have IoU 0 (not NaN).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
