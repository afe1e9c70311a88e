"""What a served model answers, computed in NumPy alone (no torch), for the inference
server and the edge app: each task's decoding of raw model outputs into response rows.

* Classification: ``{"prediction": [class, ...], "probabilities": [[p, ...], ...]}``, one
  entry per example (argmax and softmax of the logits).
* Detection: ``{"prediction": [[[class, score, xmin, ymin, xmax, ymax], ...], ...]}``, one
  list of rows per example, best score first, corners normalised to [0, 1] by the input
  image's width and height.

:func:`decode_detections` is the twin of :func:`fedge.tasks.centernet.decode` (PyTorch);
they agree to float32 rounding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "classification_response",
    "decode_detections",
    "detection_response",
    "softmax",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a batch of logits, computed stably (the row maximum is subtracted
    first); the same formula as :func:`fedge.central.edge.softmax`."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classification_response(logits: np.ndarray) -> dict[str, Any]:
    """``/predict``'s fields for a batch of classifier logits ``(B, classes)``."""
    return {
        "prediction": logits.argmax(axis=1).tolist(),
        "probabilities": softmax(logits).tolist(),
    }


def _peaks(heat: np.ndarray) -> np.ndarray:
    """Where ``heat`` ``(B, C, H, W)`` equals the maximum of its 3×3 neighbourhood (the
    border padded with -inf): CenterNet's max-pool non-maximum suppression."""
    b, c, h, w = heat.shape
    padded = np.full((b, c, h + 2, w + 2), -np.inf, dtype=heat.dtype)
    padded[:, :, 1:-1, 1:-1] = heat
    neighbourhood = padded[:, :, 0:h, 0:w]
    for dy in range(3):
        for dx in range(3):
            neighbourhood = np.maximum(neighbourhood, padded[:, :, dy : dy + h, dx : dx + w])
    return heat >= neighbourhood


def decode_detections(
    outputs: np.ndarray,
    *,
    num_classes: int,
    image_size: Sequence[int],
    score_threshold: float = 0.3,
    max_detections: int = 100,
) -> list[np.ndarray]:
    """Detections of a batch of CenterNet output maps.

    Parameters
    ----------
    outputs:
        ``(B, num_classes + 4, H, W)`` float32: heatmap logits, then size ``(w, h)`` and
        centre offset ``(dx, dy)``, both in output cells (see :mod:`fedge.tasks.centernet`).
    num_classes:
        Number of heatmap channels.
    image_size:
        ``(height, width)`` of the input image in pixels; the stride is ``height / H``
        (and ``width / W``).
    score_threshold:
        Keep peaks whose score (sigmoid of the logit) is at least this (default 0.3).
    max_detections:
        At most this many per image, the highest scores (default 100).

    Returns
    -------
    list of numpy.ndarray
        Per image, float32 rows ``[class, score, xmin, ymin, xmax, ymax]`` sorted by score
        (highest first), corners clipped to [0, 1].
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    b, channels, h, w = outputs.shape
    if channels != num_classes + 4:
        raise ValueError(f"expected {num_classes + 4} output channels, got {channels}")
    height, width = float(image_size[0]), float(image_size[1])
    stride_y, stride_x = height / h, width / w
    heat = outputs[:, :num_classes]
    with np.errstate(over="ignore"):
        scores = (1.0 / (1.0 + np.exp(-heat))).astype(np.float32)
    scores = np.where(_peaks(heat), scores, np.float32(-1.0)).reshape(b, -1)
    k = min(max_detections, scores.shape[1])
    results = []
    for i in range(b):
        if k <= 0:
            results.append(np.zeros((0, 6), dtype=np.float32))
            continue
        top = np.argpartition(-scores[i], k - 1)[:k]
        # Highest score first; equal scores by position, so the order is reproducible.
        top = top[np.lexsort((top, -scores[i][top]))]
        top = top[scores[i][top] >= score_threshold]
        cls, cell = np.divmod(top, h * w)
        y, x = np.divmod(cell, w)
        size_w = np.maximum(outputs[i, num_classes, y, x], 0)
        size_h = np.maximum(outputs[i, num_classes + 1, y, x], 0)
        cx = x + outputs[i, num_classes + 2, y, x]
        cy = y + outputs[i, num_classes + 3, y, x]
        corners = np.stack(
            [
                (cx - size_w / 2) * stride_x / width,
                (cy - size_h / 2) * stride_y / height,
                (cx + size_w / 2) * stride_x / width,
                (cy + size_h / 2) * stride_y / height,
            ],
            axis=1,
        )
        rows = np.concatenate(
            [cls[:, None], scores[i][top][:, None], np.clip(corners, 0.0, 1.0)], axis=1
        )
        results.append(rows.astype(np.float32))
    return results


def detection_response(
    outputs: np.ndarray,
    *,
    num_classes: int,
    image_size: Sequence[int],
    score_threshold: float = 0.3,
    max_detections: int = 100,
) -> dict[str, Any]:
    """``/predict``'s fields for a batch of detector outputs: one list of rows
    ``[class, score, xmin, ymin, xmax, ymax]`` per example, the class as an integer."""
    rows = decode_detections(
        outputs,
        num_classes=num_classes,
        image_size=image_size,
        score_threshold=score_threshold,
        max_detections=max_detections,
    )
    return {
        "prediction": [[[int(r[0]), *(float(v) for v in r[1:])] for r in image] for image in rows]
    }
