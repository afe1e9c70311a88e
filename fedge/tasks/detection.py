"""Object detection with a CenterNet-style single output map (see
:mod:`fedge.tasks.centernet` for the map's channels, targets and loss)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from fedge.errors import ConfigError, ModelSpecError
from fedge.models.spec import ModelSpec
from fedge.tasks import centernet
from fedge.tasks.coco_eval import coco_map
from fedge.tasks.responses import detection_response

__all__ = ["Detection"]

# CenterNet initializes the heatmap bias so that every cell starts at probability 0.1:
# the focal loss then starts small instead of being swamped by the background cells.
HEATMAP_PRIOR = 0.1


@dataclass(frozen=True)
class Detection:
    """Boxes of ``num_classes`` classes in ``(C, H, W)`` images of ``image_size`` ``(H, W)``.

    Targets are float32 ``(N, M, 5)``: per image up to ``M`` rows ``[class, xmin, ymin,
    xmax, ymax]`` in pixels, rows with class −1 as padding (:mod:`fedge.data.detection`
    makes them). The model outputs ``(B, num_classes + 4, H/stride, W/stride)``.

    Parameters
    ----------
    num_classes:
        Number of object classes.
    image_size:
        Input height and width in pixels.
    stride:
        Input pixels per output cell (default 4, CenterNet's).
    score_threshold:
        Default minimum score of a served detection (default 0.3); requests may set
        their own.
    max_detections:
        Default maximum detections per image (default 100, COCO's).
    categories:
        Names of the classes, in class-index order (optional): the edge app prints and
        draws them.
    """

    num_classes: int
    image_size: tuple[int, int]
    stride: int = 4
    score_threshold: float = 0.3
    max_detections: int = 100
    categories: tuple[str, ...] | None = None
    kind: ClassVar[str] = "detection"
    headline_metric: ClassVar[str] = "map50"

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"a detector needs at least one class, got {self.num_classes}")
        h, w = self.image_size
        if self.stride < 1 or h % self.stride or w % self.stride:
            raise ConfigError(
                f"stride {self.stride} must divide the image size {h}x{w} (pixels per output cell)"
            )
        if not 0 <= self.score_threshold <= 1:
            raise ConfigError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_detections < 1:
            raise ConfigError(f"max detections must be >= 1, got {self.max_detections}")
        if self.categories is not None and len(self.categories) != self.num_classes:
            raise ConfigError(
                f"{len(self.categories)} category names for {self.num_classes} classes"
            )

    @classmethod
    def from_spec(cls, spec: ModelSpec, **options: Any) -> Detection:
        """The detection task that ``spec``'s output map defines: classes from its channel
        count, stride from its size relative to the input."""
        out = spec.output_shapes()[-1]
        if len(spec.input_shape) != 3 or len(out) != 3 or out[0] < 5:
            raise ModelSpecError(
                f"a detector maps (C, H, W) images to (classes + 4, h, w); model "
                f"{spec.name!r} maps {list(spec.input_shape)} to {list(out)}"
            )
        _, h, w = spec.input_shape
        if h % out[1] or w % out[2] or h // out[1] != w // out[2]:
            raise ModelSpecError(
                f"model {spec.name!r}'s output {out[1]}x{out[2]} is not the {h}x{w} input "
                "divided by one integer stride"
            )
        task = cls(out[0] - 4, (h, w), h // out[1], **options)
        return task

    @property
    def output_size(self) -> tuple[int, int]:
        """Height and width of the output map in cells."""
        return (self.image_size[0] // self.stride, self.image_size[1] // self.stride)

    def check_spec(self, spec: ModelSpec) -> None:
        expected = (self.num_classes + 4, *self.output_size)
        out = spec.output_shapes()[-1]
        if tuple(spec.input_shape[1:]) != self.image_size or out != expected:
            raise ModelSpecError(
                f"a detector of {self.num_classes} classes on {self.image_size[0]}x"
                f"{self.image_size[1]} images at stride {self.stride} needs output "
                f"{list(expected)}, model {spec.name!r} maps {list(spec.input_shape)} to "
                f"{list(out)}"
            )

    def init_params(
        self, spec: ModelSpec, params: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``params`` with the last layer's heatmap biases at ``log(0.1 / 0.9)``."""
        name = f"{spec.layer_names()[-1]}.bias"
        out = dict(params)
        if name in out:
            bias = out[name].clone()
            bias[: self.num_classes] = math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR))
            out[name] = bias
        return out

    def collate(self, targets: torch.Tensor) -> centernet.CenterNetTargets:
        """CenterNet's dense targets of a batch of padded boxes ``(B, M, 5)``."""
        return centernet.encode(
            targets, num_classes=self.num_classes, stride=self.stride, output_size=self.output_size
        )

    def loss(
        self,
        outputs: torch.Tensor,
        targets: centernet.CenterNetTargets,
        *,
        reduction: Literal["mean", "sum"] = "mean",
    ) -> torch.Tensor:
        per_image = centernet.loss_terms(outputs, targets, self.num_classes)["loss"]
        return per_image.mean() if reduction == "mean" else per_image.sum()

    def decode(
        self,
        outputs: torch.Tensor,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[torch.Tensor]:
        """Per image rows ``[class, score, xmin, ymin, xmax, ymax]``, corners in [0, 1]."""
        return centernet.decode(
            outputs,
            num_classes=self.num_classes,
            image_size=self.image_size,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            max_detections=self.max_detections if max_detections is None else max_detections,
        )

    @torch.no_grad()
    def evaluate(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int = 128,
        score_threshold: float = 0.01,
    ) -> dict[str, float]:
        """Mean loss, COCO ``map`` (mAP@[.5:.95]) and ``map50`` (mAP@.5).

        Detections are decoded with a low ``score_threshold`` (default 0.01) and at most
        100 per image, as COCO evaluates: average precision already weighs confidence.
        """
        model.eval()
        n = int(y.shape[0])
        if n == 0:
            return {"loss": float("nan"), "map": float("nan"), "map50": float("nan")}
        loss = torch.zeros((), dtype=torch.float64)
        found: list[np.ndarray] = []
        scale = torch.tensor([1, 1, *reversed(self.image_size), *reversed(self.image_size)])
        for start in range(0, n, batch_size):
            outputs = model(x[start : start + batch_size])
            loss += self.loss(outputs, self.collate(y[start : start + batch_size]), reduction="sum")
            rows = self.decode(outputs, score_threshold=score_threshold, max_detections=100)
            found += [(r * scale).numpy() for r in rows]
        truth = [boxes[boxes[:, 0] >= 0].numpy() for boxes in y]
        return {"loss": float(loss) / n, **coco_map(truth, found, num_classes=self.num_classes)}

    def respond(
        self,
        outputs: np.ndarray,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> dict[str, Any]:
        """``{"prediction": [[[class, score, xmin, ymin, xmax, ymax], ...], ...]}``: one
        list of rows per image, corners normalised to [0, 1] (NumPy, no torch)."""
        return detection_response(
            outputs,
            num_classes=self.num_classes,
            image_size=self.image_size,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            max_detections=self.max_detections if max_detections is None else max_detections,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "stride": self.stride,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            **({} if self.categories is None else {"categories": list(self.categories)}),
        }
