"""Federated Averaging.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data". AISTATS 2017.

Each sampled client starts from the global model w, runs E epochs of minibatch SGD on its
n_k examples and reports w_k; the new global model is Σ n_k·w_k / Σ n_k over the clients
that reported.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedge.errors import FedgeError
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientUpdate, Params, ServerState

__all__ = ["FedAvg", "weighted_average"]


def weighted_average(updates: Iterable[ClientUpdate]) -> tuple[Params, int, int]:
    """Σ n_k·w_k / Σ n_k over ``updates`` with a running float64 sum.

    Returns the average (in each parameter's original dtype), the number of updates and
    Σ n_k. Raises :class:`FedgeError` when there is no update to average.
    """
    acc: dict[str, torch.Tensor] | None = None
    dtypes: dict[str, torch.dtype] = {}
    total = count = 0
    for update in updates:
        n = update.num_samples
        if acc is None:
            dtypes = {k: v.dtype for k, v in update.params.items()}
            acc = {k: v.detach().to(torch.float64) * n for k, v in update.params.items()}
        else:
            for k, v in update.params.items():
                acc[k].add_(v.detach().to(torch.float64), alpha=n)
        total += n
        count += 1
    if acc is None or total == 0:
        raise FedgeError("no client update to aggregate in this round")
    return {k: (v / total).to(dtypes[k]) for k, v in acc.items()}, count, total


class FedAvg(Strategy):
    """Federated Averaging: the sample-weighted mean of the clients' models."""

    name = "fedavg"

    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        params, _, _ = weighted_average(updates)
        return ServerState(params=params, round=state.round + 1, extras=state.extras)
