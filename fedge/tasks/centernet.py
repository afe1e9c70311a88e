"""CenterNet's targets, loss and decoding in PyTorch (Zhou, Wang & Krähenbühl, "Objects as
Points", 2019, arXiv:1904.07850), for one output map of stride ``s``.

The model's output ``(B, K + 4, H, W)`` holds, per output cell:

* channels ``0 .. K-1``: heatmap logits, one per class; a box is detected where its class's
  heatmap peaks, at the cell that holds the box centre;
* ``K, K+1``: box width and height in output cells (pixels / ``s``);
* ``K+2, K+3``: the centre's offset ``(dx, dy)`` in [0, 1) from the cell's corner, which
  the stride would otherwise round away.

Targets (:func:`encode`) are CenterNet's: per class a heatmap that is 1 at each box's
centre cell and falls off as a Gaussian of radius :func:`gaussian_radius` (the largest
corner shift that keeps IoU ≥ 0.7), merged by maximum; size and offset at the centre
cells. The loss (:func:`loss_terms`) is CenterNet's penalty-reduced focal loss on the
heatmap (α = 2, β = 4) plus L1 on size (weight 0.1) and offset (weight 1) at the centres.

One departure: CenterNet divides the batch's summed loss by the batch's number of
objects; here each image's loss is divided by its own number of objects (at least 1)
and the batch loss is the mean over images. Every loss in fedge is then a mean of
per-example terms, as cross-entropy is, which is what lets data-parallel workers add
their shards' sums and FedAvg weight clients by example counts, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CenterNetTargets",
    "decode",
    "encode",
    "focal_loss",
    "gaussian_radius",
    "loss_terms",
]

SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0
FOCAL_ALPHA = 2
FOCAL_BETA = 4


@dataclass(frozen=True)
class CenterNetTargets:
    """Dense targets of a batch at the output resolution.

    ``heatmap`` ``(B, K, H, W)`` in [0, 1]; ``size`` and ``offset`` ``(B, 2, H, W)``,
    meaningful where ``mask`` ``(B, H, W)`` is 1 (the centre cells); ``num_objects``
    ``(B,)`` counts each image's boxes.
    """

    heatmap: torch.Tensor
    size: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor
    num_objects: torch.Tensor


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius for a box of ``height × width`` output cells: the
    smallest of the three corner shifts (both corners in, both out, one each) at which
    the shifted box's IoU with the true one falls to ``min_overlap``. CenterNet's formula
    as published (``draw_gaussian.gaussian_radius``), kept for comparability."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    # As published r2 lacks the division by a2 = 4, so it never binds (r2 >= h + w >= r1).
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode(
    boxes: torch.Tensor, *, num_classes: int, stride: int, output_size: tuple[int, int]
) -> CenterNetTargets:
    """Dense targets of a batch of boxes.

    ``boxes`` ``(B, M, 5)`` holds rows ``[class, xmin, ymin, xmax, ymax]`` in input pixels;
    rows with class −1 pad images with fewer than ``M`` boxes. Two boxes whose centres fall
    in the same cell share its size and offset (the later row wins), as in CenterNet.
    """
    b = boxes.shape[0]
    h, w = output_size
    heatmap = torch.zeros(b, num_classes, h, w)
    size = torch.zeros(b, 2, h, w)
    offset = torch.zeros(b, 2, h, w)
    mask = torch.zeros(b, h, w)
    valid = boxes[..., 0] >= 0
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    for i, j in valid.nonzero().tolist():
        cls, x0, y0, x1, y1 = (float(v) for v in boxes[i, j])
        bw, bh = (x1 - x0) / stride, (y1 - y0) / stride
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw))))
        sigma = (2 * radius + 1) / 6
        gauss = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
        window = ((xs - ix).abs() <= radius) & ((ys - iy).abs() <= radius)
        # CenterNet zeroes the kernel below float epsilon times its peak.
        gauss = torch.where(window & (gauss >= torch.finfo(torch.float32).eps), gauss, 0.0)
        heatmap[i, int(cls)] = torch.maximum(heatmap[i, int(cls)], gauss)
        size[i, :, iy, ix] = torch.tensor([bw, bh])
        offset[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
        mask[i, iy, ix] = 1.0
    return CenterNetTargets(heatmap, size, offset, mask, valid.sum(dim=1))


def focal_loss(logits: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss summed over each image ``(B,)``:
    ``-(1-p)^α log p`` where the target is 1, ``-(1-y)^β p^α log(1-p)`` elsewhere, with
    ``p = sigmoid(logit)`` (log-probabilities from ``logsigmoid``, so no clamping)."""
    p = torch.sigmoid(logits)
    positive = heatmap.eq(1).to(logits.dtype)
    pos = F.logsigmoid(logits) * (1 - p).pow(FOCAL_ALPHA) * positive
    neg = F.logsigmoid(-logits) * p.pow(FOCAL_ALPHA) * (1 - heatmap).pow(FOCAL_BETA)
    neg = neg * (1 - positive)
    return -(pos + neg).flatten(1).sum(dim=1)


def loss_terms(
    outputs: torch.Tensor, targets: CenterNetTargets, num_classes: int
) -> dict[str, torch.Tensor]:
    """Per-image terms ``(B,)``: ``heatmap``, ``size``, ``offset`` (each already divided by
    the image's number of objects, at least 1) and their weighted sum ``loss``."""
    k = num_classes
    n = targets.num_objects.clamp(min=1).to(outputs.dtype)
    mask = targets.mask.unsqueeze(1)
    # CenterNet's RegL1Loss: summed |error| over both components at the centres, divided
    # by the number of (object, component) pairs.
    size = ((outputs[:, k : k + 2] - targets.size).abs() * mask).flatten(1).sum(1) / (2 * n)
    offset = ((outputs[:, k + 2 : k + 4] - targets.offset).abs() * mask).flatten(1).sum(1)
    offset = offset / (2 * n)
    heat = focal_loss(outputs[:, :k], targets.heatmap) / n
    return {
        "heatmap": heat,
        "size": size,
        "offset": offset,
        "loss": heat + SIZE_WEIGHT * size + OFFSET_WEIGHT * offset,
    }


@torch.no_grad()
def decode(
    outputs: torch.Tensor,
    *,
    num_classes: int,
    image_size: tuple[int, int],
    score_threshold: float = 0.3,
    max_detections: int = 100,
) -> list[torch.Tensor]:
    """Detections of a batch of output maps, per image float32 rows ``[class, score,
    xmin, ymin, xmax, ymax]``, best first, corners normalised to [0, 1] by
    ``image_size`` ``(height, width)``: peaks of the class heatmaps (a cell that is the
    maximum of its 3×3 neighbourhood, found on the logits so that saturated sigmoids do
    not tie), the ``max_detections`` highest, those scoring at least ``score_threshold``.
    The NumPy twin is :func:`fedge.tasks.responses.decode_detections`."""
    outputs = outputs.detach().float()
    b, channels, h, w = outputs.shape
    if channels != num_classes + 4:
        raise ValueError(f"expected {num_classes + 4} output channels, got {channels}")
    height, width = float(image_size[0]), float(image_size[1])
    stride_y, stride_x = height / h, width / w
    heat = outputs[:, :num_classes]
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1) <= heat
    scores = torch.where(peaks, torch.sigmoid(heat), -1.0).reshape(b, -1)
    k = min(max_detections, scores.shape[1])
    results = []
    for i in range(b):
        top_scores, top = torch.topk(scores[i], k)
        keep = top_scores >= score_threshold
        top, top_scores = top[keep].long(), top_scores[keep]
        cls, cell = top // (h * w), top % (h * w)
        y, x = cell // w, cell % w
        size_w = outputs[i, num_classes, y, x].clamp(min=0)
        size_h = outputs[i, num_classes + 1, y, x].clamp(min=0)
        cx = x + outputs[i, num_classes + 2, y, x]
        cy = y + outputs[i, num_classes + 3, y, x]
        corners = torch.stack(
            [
                (cx - size_w / 2) * stride_x / width,
                (cy - size_h / 2) * stride_y / height,
                (cx + size_w / 2) * stride_x / width,
                (cy + size_h / 2) * stride_y / height,
            ],
            dim=1,
        ).clamp(0.0, 1.0)
        results.append(torch.cat([cls[:, None].float(), top_scores[:, None], corners], dim=1))
    return results
