"""COCO box mAP with the reference implementation, ``pycocotools`` (Lin et al., "Microsoft
COCO", ECCV 2014): mAP@[.5:.95] (the mean over IoU thresholds 0.50, 0.55, ..., 0.95) and
mAP@.5, each the mean over classes of 101-point interpolated average precision, at most
100 detections per image, all box areas.

Inputs are in pixels; the boxes are converted to COCO's ``[x, y, w, h]`` and evaluated in
memory (nothing is written, pycocotools' progress messages are swallowed).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from fedge.tasks.boxes import xyxy_to_xywh

__all__ = ["coco_map"]


def coco_map(
    ground_truth: Sequence[np.ndarray],
    detections: Sequence[np.ndarray],
    *,
    num_classes: int,
) -> dict[str, float]:
    """``{"map": mAP@[.5:.95], "map50": mAP@.5}`` of ``detections`` against
    ``ground_truth``, one array per image in the same order.

    Parameters
    ----------
    ground_truth:
        Per image, rows ``[class, xmin, ymin, xmax, ymax]`` in pixels (``(n, 5)``; rows
        with class −1 are padding and ignored).
    detections:
        Per image, rows ``[class, score, xmin, ymin, xmax, ymax]`` in pixels (``(m, 6)``).
    num_classes:
        Classes are ``0 .. num_classes-1``; classes without any ground-truth box do not
        count in the means (COCO's rule).

    Returns both as ``nan`` when there is no ground-truth box at all, and 0 when there
    are boxes but no detections.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # a declared dependency; say how to get it back
        raise ImportError(
            f"detection metrics need pycocotools ({exc}): pip install pycocotools"
        ) from exc
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists"
        )
    images, annotations, results = [], [], []
    for image_id, (truth, found) in enumerate(zip(ground_truth, detections, strict=True)):
        images.append({"id": image_id})
        truth = np.asarray(truth, dtype=np.float64).reshape(-1, 5)
        for cls, box in zip(truth[:, 0], xyxy_to_xywh(truth[:, 1:]), strict=True):
            if cls < 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        found = np.asarray(found, dtype=np.float64).reshape(-1, 6)
        for cls, score, box in zip(
            found[:, 0], found[:, 1], xyxy_to_xywh(found[:, 2:]), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": box.tolist(),
                    "score": float(score),
                }
            )
    if not annotations:
        return {"map": float("nan"), "map50": float("nan")}
    if not results:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        truth_api = COCO()
        truth_api.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in range(num_classes)],
        }
        truth_api.createIndex()
        evaluator = COCOeval(truth_api, truth_api.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"map": max(float(stats[0]), 0.0), "map50": max(float(stats[1]), 0.0)}
