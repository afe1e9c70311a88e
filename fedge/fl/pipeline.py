"""The path of an update between local training and aggregation.

An update passes through an ordered list of :class:`UpdateTransform` on its way from the
client to the strategy (clipping, noise, compression and secure-aggregation masks arrive
as transforms; strategies never see how an update travelled). The server always starts by
checking an update against the global model with :func:`check_update`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from fedge.errors import UpdateRejected
from fedge.fl.types import ClientUpdate

__all__ = ["UpdateTransform", "apply_transforms", "check_update"]


class UpdateTransform(Protocol):
    """One stage of the update pipeline, a pure function of the update."""

    def __call__(self, update: ClientUpdate) -> ClientUpdate: ...


def apply_transforms(update: ClientUpdate, transforms: Sequence[UpdateTransform]) -> ClientUpdate:
    """Pass ``update`` through ``transforms`` in order."""
    for transform in transforms:
        update = transform(update)
    return update


def check_update(update: ClientUpdate, reference: Mapping[str, torch.Tensor]) -> ClientUpdate:
    """Reject an update whose parameters do not match ``reference`` in names, shapes and
    dtypes, that holds NaN or Inf, or that claims no training examples."""
    who = f"update from client {update.client_id}"
    if update.num_samples < 1:
        raise UpdateRejected(f"{who}: num_samples must be >= 1, got {update.num_samples}")
    if update.params.keys() != reference.keys():
        missing = sorted(reference.keys() - update.params.keys())
        extra = sorted(update.params.keys() - reference.keys())
        raise UpdateRejected(
            f"{who}: parameter names differ (missing {missing}, unexpected {extra})"
        )
    for name, ref in reference.items():
        value = update.params[name]
        if value.shape != ref.shape:
            raise UpdateRejected(
                f"{who}: {name} has shape {list(value.shape)}, expected {list(ref.shape)}"
            )
        if value.dtype != ref.dtype:
            raise UpdateRejected(f"{who}: {name} has dtype {value.dtype}, expected {ref.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise UpdateRejected(f"{who}: {name} holds NaN or Inf")
    return update
