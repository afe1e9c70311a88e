"""Classification: one class label per example, logits out, softmax cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from fedge.errors import ModelSpecError
from fedge.models.spec import ModelSpec
from fedge.tasks.responses import classification_response

__all__ = ["Classification"]


@dataclass(frozen=True)
class Classification:
    """Single-label classification into ``num_classes`` classes.

    Targets are int64 labels ``(N,)``; the model outputs logits ``(B, num_classes)``.
    :meth:`loss` and :meth:`evaluate` compute exactly what :mod:`fedge.fl.local` and
    the training jobs compute today (tested to the bit).
    """

    num_classes: int
    kind: ClassVar[str] = "classification"
    headline_metric: ClassVar[str] = "accuracy"

    def check_spec(self, spec: ModelSpec) -> None:
        out = spec.output_shapes()[-1]
        if out != (self.num_classes,):
            raise ModelSpecError(
                f"a classifier of {self.num_classes} classes needs output shape "
                f"[{self.num_classes}], model {spec.name!r} has {list(out)}"
            )

    def init_params(
        self, spec: ModelSpec, params: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return dict(params)

    def collate(self, targets: torch.Tensor) -> torch.Tensor:
        return targets

    def loss(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        reduction: Literal["mean", "sum"] = "mean",
    ) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction=reduction)

    def decode(self, outputs: torch.Tensor, **options: Any) -> torch.Tensor:
        """The most likely class of each example."""
        return outputs.argmax(dim=1)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
    ) -> dict[str, float]:
        """Mean cross-entropy and accuracy (``nan`` for an empty set)."""
        model.eval()
        n = int(y.shape[0])
        if n == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss += F.cross_entropy(logits, target, reduction="sum")
            correct += int((logits.argmax(dim=1) == target).sum())
        return {"loss": float(loss) / n, "accuracy": correct / n}

    def respond(self, outputs: np.ndarray, **options: Any) -> dict[str, Any]:
        return classification_response(outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes}
