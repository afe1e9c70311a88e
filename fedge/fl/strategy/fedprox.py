"""FedProx: FedAvg with a proximal term in every client's objective.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
Networks". MLSys 2020.

Client k minimizes F_k(w) + μ/2·‖w − w_global‖², whose gradient adds μ·(w − w_global) to
every local step. FedProx tolerates partial work: a client that ran fewer local steps than
asked (a straggler) still contributes its update.
"""

from __future__ import annotations

from fedge.errors import ConfigError
from fedge.fl.aggregators import Aggregator
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, Params

__all__ = ["FedProx"]


class FedProx(Strategy):
    """FedAvg plus the proximal term μ/2·‖w − w_global‖².

    Parameters
    ----------
    mu:
        Proximal coefficient μ ≥ 0, default 0.01 (μ = 0 is FedAvg with partial work).
    aggregator, server_optimizer:
        As for :class:`~fedge.fl.strategy.base.Strategy`.
    """

    name = "fedprox"
    accepts_partial_work = True

    def __init__(
        self,
        *,
        mu: float = 0.01,
        aggregator: Aggregator | None = None,
        server_optimizer: ServerOptimizer | None = None,
    ):
        if not mu >= 0:
            raise ConfigError(f"FedProx mu must be >= 0, got {mu}")
        super().__init__(aggregator=aggregator, server_optimizer=server_optimizer)
        self.mu = mu

    def grad_correction(self, params: Params, task: ClientTask) -> Params | None:
        """∇ of μ/2·‖w − w_global‖², i.e. μ·(w − w_global)."""
        if self.mu == 0:
            return None
        return {k: self.mu * (p.detach() - task.params[k]) for k, p in params.items()}
