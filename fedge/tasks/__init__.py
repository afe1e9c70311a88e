"""Tasks: what differs between classification and detection (targets, loss, decoding,
metrics, the serving response). See :mod:`fedge.tasks.base`.

Names load on first use (see :mod:`fedge._lazy`): :mod:`fedge.tasks.responses` and
:mod:`fedge.tasks.boxes` need only NumPy, for the edge app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedge._lazy import lazy_exports
from fedge.errors import ConfigError

_EXPORTS = {
    "Task": "fedge.tasks.base",
    "Classification": "fedge.tasks.classification",
    "Detection": "fedge.tasks.detection",
    "box_iou": "fedge.tasks.boxes",
    "xywh_to_xyxy": "fedge.tasks.boxes",
    "xyxy_to_xywh": "fedge.tasks.boxes",
    "coco_map": "fedge.tasks.coco_eval",
    "decode_detections": "fedge.tasks.responses",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)


def task_from_dict(data: dict[str, Any]) -> Any:
    """The task that :meth:`Task.to_dict` described."""
    kind = data.get("kind") if isinstance(data, dict) else None
    options = {k: v for k, v in data.items() if k != "kind"} if isinstance(data, dict) else {}
    try:
        if kind == "classification":
            from fedge.tasks.classification import Classification

            return Classification(**options)
        if kind == "detection":
            from fedge.tasks.detection import Detection

            for key in ("image_size", "categories"):
                if isinstance(options.get(key), list):
                    options[key] = tuple(options[key])
            return Detection(**options)
    except TypeError as exc:
        raise ConfigError(f"invalid {kind} task description {data!r}: {exc}") from None
    raise ConfigError(f"unknown task kind {kind!r}: choose classification or detection")


if TYPE_CHECKING:
    from fedge.tasks.base import Task
    from fedge.tasks.boxes import box_iou, xywh_to_xyxy, xyxy_to_xywh
    from fedge.tasks.classification import Classification
    from fedge.tasks.coco_eval import coco_map
    from fedge.tasks.detection import Detection
    from fedge.tasks.responses import decode_detections

__all__ = [
    "Classification",
    "Detection",
    "Task",
    "box_iou",
    "coco_map",
    "decode_detections",
    "task_from_dict",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]
