"""The server's check of an update before aggregation: :func:`check_update` holds it
against the global model (names, shapes, dtypes, finite values, a sample count)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedge.errors import UpdateRejected
from fedge.fl.types import ClientUpdate

__all__ = ["check_update"]


def _check_tensors(
    who: str, what: str, got: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> None:
    if got.keys() != reference.keys():
        missing = sorted(reference.keys() - got.keys())
        extra = sorted(got.keys() - reference.keys())
        raise UpdateRejected(f"{who}: {what} names differ (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        value = got[name]
        if value.shape != ref.shape:
            raise UpdateRejected(
                f"{who}: {name} has shape {list(value.shape)}, expected {list(ref.shape)}"
            )
        if value.dtype != ref.dtype:
            raise UpdateRejected(f"{who}: {name} has dtype {value.dtype}, expected {ref.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise UpdateRejected(f"{who}: {name} holds NaN or Inf")


def check_update(
    update: ClientUpdate,
    reference: Mapping[str, torch.Tensor],
    *,
    extras: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    max_samples: int | None = None,
) -> ClientUpdate:
    """Reject an update whose parameters do not match ``reference`` in names, shapes and
    dtypes, that holds NaN or Inf, or that claims no training examples.

    With ``extras`` (the strategy's :meth:`~fedge.fl.strategy.Strategy.reported_extras`)
    the tensors a client reports beyond its weights are checked as strictly, by group;
    ``max_samples`` bounds the claimed sample count, so that no device can outweigh the
    fleet by claiming a huge ``n_k``; metrics must be finite numbers.
    """
    who = f"update from client {update.client}"
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UpdateRejected(f"{who}: num_samples must be an integer >= 1, got {n!r}")
    if max_samples is not None and n > max_samples:
        raise UpdateRejected(f"{who}: num_samples {n} exceeds the limit of {max_samples}")
    if isinstance(update.num_steps, bool) or update.num_steps < 0:
        raise UpdateRejected(f"{who}: num_steps must be >= 0, got {update.num_steps!r}")
    for key, value in update.metrics.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise UpdateRejected(f"{who}: metric {key!r} must be a finite number, got {value!r}")
    _check_tensors(who, "parameter", update.params, reference)
    if extras is not None:
        if update.extras.keys() != extras.keys():
            raise UpdateRejected(
                f"{who}: reports {sorted(update.extras)} beyond its weights, "
                f"expected {sorted(extras)}"
            )
        for group, like in extras.items():
            _check_tensors(f"{who} ({group})", f"{group}", update.extras[group], like)
    return update
