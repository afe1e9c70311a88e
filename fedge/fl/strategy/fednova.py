"""FedNova: normalized averaging.

Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization". NeurIPS 2020.

Clients that run different numbers of local steps τ_k pull the plain average towards
their own objectives. FedNova divides each delta by a_k, the norm of its local-step
weights (a_k = τ_k for plain SGD; with momentum ρ,
a_k = [τ_k − ρ(1 − ρ^τ_k)/(1 − ρ)] / (1 − ρ)), averages those normalized deltas with
weights p_k = n_k/Σn, and rescales by τ_eff = Σ p_k a_k. With equal τ_k it is FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fedge.errors import ConfigError
from fedge.fl.aggregators import Aggregator
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientUpdate, Params, ServerState

__all__ = ["FedNova", "local_step_norm"]


def local_step_norm(steps: int, momentum: float) -> float:
    """a_k: the L1 norm of the weights local SGD with ``momentum`` puts on its gradients."""
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class FedNova(Strategy):
    """FedNova with the clients' local momentum ρ (needed to compute a_k).

    Parameters
    ----------
    momentum:
        The clients' local SGD momentum ρ, default 0.
    aggregator, server_optimizer:
        As for :class:`~fedge.fl.strategy.base.Strategy`.
    """

    name = "fednova"
    accepts_partial_work = True

    def __init__(
        self,
        *,
        momentum: float = 0.0,
        aggregator: Aggregator | None = None,
        server_optimizer: ServerOptimizer | None = None,
    ):
        if not 0 <= momentum < 1:
            raise ConfigError(f"FedNova momentum must be in [0, 1), got {momentum}")
        super().__init__(aggregator=aggregator, server_optimizer=server_optimizer)
        self.momentum = momentum

    def combine(self, state: ServerState, updates: Iterable[ClientUpdate]) -> Params:
        sums = {"n_a": 0.0, "n": 0.0}

        def normalized() -> Iterator[tuple[Params, float]]:
            for update in updates:
                if update.num_steps == 0:
                    continue
                a = local_step_norm(update.num_steps, self.momentum)
                n = float(update.num_samples)
                sums["n_a"] += n * a
                sums["n"] += n
                yield {k: (update.params[k] - w) / a for k, w in state.params.items()}, n

        direction = self.aggregator(normalized())
        tau_eff = sums["n_a"] / sums["n"]
        return {k: tau_eff * v for k, v in direction.items()}
