"""A test set held out of the training examples, the same for every run that asks for it."""

from __future__ import annotations

import numpy as np
import torch

from fedge.data.dataset import FederatedData
from fedge.errors import DataError

__all__ = ["held_out_rows", "hold_out"]


def held_out_rows(
    n: int, fraction: float, seed: int, name: str = "the data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and the held-out rows of ``n`` examples (see :func:`hold_out`)."""
    n_test = max(1, round(fraction * n))
    if n - n_test < 1:
        raise DataError(f"{name} has {n} examples: too few to hold out a test set")
    state = np.random.SeedSequence([seed, 0x4E1D]).generate_state(2)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    order = torch.randperm(n, generator=generator)
    return order[n_test:], order[:n_test]


def hold_out(data: FederatedData, fraction: float, seed: int) -> FederatedData:
    """Move a seeded ``fraction`` of the training examples (at least one) to the test set.

    The rows depend only on ``seed`` and the number of examples, so a training job and a
    simulation that hold out a test set of the same data with the same seed evaluate on
    the same examples.
    """
    train, test = held_out_rows(len(data.train), fraction, seed, data.name)
    return FederatedData(
        name=data.name,
        train=data.train.subset(train),
        test=data.train.subset(test),
        num_classes=data.num_classes,
    )
