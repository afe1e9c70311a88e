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

import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.aggregators import Aggregator
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState, unflatten_by_name

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

    # --- sum path: the client divides by a_k, so the server needs only sums ------------

    #: The largest a_k the sum path encodes (a_k ≈ local steps); larger values are clipped.
    max_step_norm: float = 10_000.0

    def sum_bounds(
        self, state: ServerState, clip_range: float
    ) -> dict[str, tuple[int, float, float]]:
        return {
            **super().sum_bounds(state, clip_range),
            "weighted_norm": (1, 0.0, self.max_step_norm),
        }

    def secure_parts(
        self,
        task: ClientTask,
        update: ClientUpdate,
        weight: float,
        clip_norm: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """ω·Δ/a_k, ω and ω·a_k; a client that took no step sends zeros (it is skipped)."""
        parts = super().secure_parts(task, update, weight, clip_norm)
        if update.num_steps == 0:
            return {k: torch.zeros_like(v) for k, v in parts.items()} | {
                "weighted_norm": torch.zeros(1, dtype=torch.float64)
            }
        a = local_step_norm(update.num_steps, self.momentum)
        parts["delta"] = parts["delta"] / a
        parts["weighted_norm"] = torch.tensor([weight * a], dtype=torch.float64)
        return parts

    def apply_sums(
        self, state: ServerState, sums: dict[str, torch.Tensor], count: int
    ) -> ServerState:
        """τ_eff · Σω·Δ/a / Σω with τ_eff = Σω·a / Σω."""
        total = float(sums["weight"][0])
        if not total > 0:
            raise FedgeError("the round's summed weight is not positive: nothing to average")
        tau_eff = float(sums["weighted_norm"][0]) / total
        direction = unflatten_by_name(sums["delta"] * (tau_eff / total), state.params)
        return self.apply_delta(state, direction)
