"""What a task is: everything that differs between classification and detection.

Training loops, evaluation, export, serving and the edge app ask the task instead of
assuming classification. A task is a small frozen object with pure methods; a dataset's
targets stay one tensor per split, indexed like features (``y[idx]``), so that the
loops that cut batches do not change:

=================  ======================================  ===============================
                   :class:`~fedge.tasks.Classification`    :class:`~fedge.tasks.Detection`
=================  ======================================  ===============================
targets ``y``      int64 ``(N,)`` class labels             float32 ``(N, M, 5)`` boxes
                                                           ``[class, x0, y0, x1, y1]``
                                                           in pixels, class −1 pads
model output       logits ``(B, classes)``                 map ``(B, classes + 4, h, w)``
``collate``        the labels                              CenterNet's dense targets
``loss``           softmax cross-entropy                   focal + L1 size + L1 offset
``decode``         argmax                                  peaks → rows (class, score, box)
``evaluate``       ``loss``, ``accuracy``                  ``loss``, ``map``, ``map50``
``respond``        ``prediction``, ``probabilities``       ``prediction``: rows per image
=================  ======================================  ===============================

Both losses are means over examples of per-example terms (``reduction="sum"`` gives
the sum), so data-parallel training and FedAvg's weighting by example counts apply
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fedge.models.spec import ModelSpec

__all__ = ["Task"]


@runtime_checkable
class Task(Protocol):
    """A learning task (see the module docstring for the two that exist)."""

    #: ``"classification"`` or ``"detection"``.
    kind: str
    #: Name of the metric that ranks models ("best epoch"); higher is better.
    headline_metric: str

    def check_spec(self, spec: ModelSpec) -> None:
        """Raise :class:`~fedge.errors.ModelSpecError` unless ``spec``'s output fits."""
        ...

    def init_params(
        self, spec: ModelSpec, params: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Initial weights of a fresh model: ``params`` (PyTorch's initialization) with
        the task's changes, if any."""
        ...

    def collate(self, targets: torch.Tensor) -> Any:
        """What :meth:`loss` takes, from a batch of targets ``y[idx]``."""
        ...

    def loss(
        self, outputs: torch.Tensor, targets: Any, *, reduction: Literal["mean", "sum"] = "mean"
    ) -> torch.Tensor:
        """Mean (or sum) over the batch of the per-example loss."""
        ...

    def decode(self, outputs: torch.Tensor, **options: Any) -> Any:
        """Predictions from a batch of raw outputs (PyTorch)."""
        ...

    def evaluate(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int
    ) -> dict[str, float]:
        """Metrics of ``model`` on ``(x, y)``, ``loss`` and :attr:`headline_metric` among
        them."""
        ...

    def respond(self, outputs: np.ndarray, **options: Any) -> dict[str, Any]:
        """The fields of a ``/predict`` answer for a batch of raw outputs (NumPy)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description that :func:`fedge.tasks.task_from_dict` restores."""
        ...
