"""In-memory datasets: the one type every loader returns and every engine reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedge.errors import DataError

if TYPE_CHECKING:
    from fedge.data.detection import DetectionDataset

__all__ = ["ArrayDataset", "FederatedData"]


@dataclass(frozen=True)
class ArrayDataset:
    """Features and labels held as two tensors.

    ``x`` is float32 with shape ``(N, *input_shape)`` (images are ``(N, C, H, W)``
    scaled to [0, 1]), or int64 token ids for text; ``y`` is int64 with shape ``(N,)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"features and labels differ in length: {self.x.shape[0]} vs {self.y.shape[0]}"
            )
        if self.y.dtype != torch.int64:
            raise DataError(f"labels must be int64, got {self.y.dtype}")
        if not (self.x.is_floating_point() or self.x.dtype == torch.int64):
            raise DataError(f"features must be float or int64 tokens, got {self.x.dtype}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray | torch.Tensor) -> ArrayDataset:
        """Rows at ``indices`` (a copy)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return ArrayDataset(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class FederatedData:
    """A dataset as loaded, before it is split among clients.

    Attributes
    ----------
    name:
        Short name, e.g. ``"fashion_mnist"``.
    train, test:
        Pooled training and test sets: examples with class labels, or for detection
        images with boxes (:class:`~fedge.data.detection.DetectionDataset`).
    num_classes:
        Number of classes; labels (or box classes) are ``0 .. num_classes-1``.
    natural_partition:
        For data that comes split by device (LEAF users, Synthetic devices): the
        training-set row indices of each user, in ``client_ids`` order. ``None``
        for data with no natural owner (Fashion-MNIST, digits).
    client_ids:
        Names of the natural users (same order as ``natural_partition``).
    natural_test_partition:
        Test-set row indices of each natural user, when the source has them.
    """

    name: str
    train: ArrayDataset | DetectionDataset
    test: ArrayDataset | DetectionDataset
    num_classes: int
    natural_partition: list[np.ndarray] | None = None
    client_ids: list[str] | None = None
    natural_test_partition: list[np.ndarray] | None = field(default=None)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 28, 28)``."""
        return tuple(self.train.x.shape[1:])
