"""Federated Averaging and its server-momentum variant.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data". AISTATS 2017.
Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification". 2019 (FedAvgM).

Each sampled client starts from the global model w, runs E epochs of minibatch SGD on its
n_k examples and reports w_k; the new global model is Σ n_k·w_k / Σ n_k over the clients
that reported. FedAvgM applies that average as a step of server SGD with momentum.
"""

from __future__ import annotations

from fedge.fl.aggregators import Aggregator
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy.base import Strategy

__all__ = ["FedAvg", "FedAvgM"]


class FedAvg(Strategy):
    """Federated Averaging: the sample-weighted mean of the clients' models."""

    name = "fedavg"


class FedAvgM(Strategy):
    """FedAvg with server momentum: v ← μ·v + Δ, w ← w + η·v.

    Parameters
    ----------
    server_lr:
        η, default 1.0.
    server_momentum:
        μ, default 0.9.
    aggregator:
        Combines client deltas (default weighted mean).
    """

    name = "fedavgm"

    def __init__(
        self,
        *,
        server_lr: float = 1.0,
        server_momentum: float = 0.9,
        aggregator: Aggregator | None = None,
    ):
        opt = ServerOptimizer("sgd", lr=server_lr, momentum=server_momentum)
        super().__init__(aggregator=aggregator, server_optimizer=opt)
