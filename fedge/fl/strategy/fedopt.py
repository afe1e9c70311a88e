"""Adaptive server optimizers: FedAdagrad, FedAdam, FedYogi.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan. "Adaptive Federated
Optimization". ICLR 2021, Algorithm 2. Clients run plain local SGD as in FedAvg; the server
treats the averaged delta as a pseudo-gradient for Adagrad, Adam or Yogi (see
:mod:`fedge.fl.server_opt` for the update rules).
"""

from __future__ import annotations

from typing import Any, Literal

from fedge.fl.aggregators import Aggregator
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy.base import Strategy

__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]


class FedOpt(Strategy):
    """FedAvg's clients with an adaptive server optimizer.

    Parameters
    ----------
    optimizer:
        ``"adagrad"``, ``"adam"`` or ``"yogi"``.
    server_lr:
        η, default 0.01 (the paper tunes it per task; 10^-2 to 1 is typical).
    beta1, beta2:
        Moment decay rates, default 0.9 and 0.99.
    tau:
        Adaptivity τ, default 1e-3.
    aggregator:
        Combines client deltas (default weighted mean).
    """

    name = "fedopt"

    def __init__(
        self,
        optimizer: Literal["adagrad", "adam", "yogi"],
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        aggregator: Aggregator | None = None,
    ):
        opt = ServerOptimizer(optimizer, lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
        super().__init__(aggregator=aggregator, server_optimizer=opt)


class FedAdagrad(FedOpt):
    """:class:`FedOpt` with Adagrad on the server."""

    name = "fedadagrad"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("adagrad", **kwargs)


class FedAdam(FedOpt):
    """:class:`FedOpt` with Adam on the server."""

    name = "fedadam"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("adam", **kwargs)


class FedYogi(FedOpt):
    """:class:`FedOpt` with Yogi on the server."""

    name = "fedyogi"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("yogi", **kwargs)
