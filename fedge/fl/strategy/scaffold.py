"""SCAFFOLD: stochastic controlled averaging.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning". ICML 2020, Algorithm 1 with option II.

The server keeps a control variate c, each client its own c_i (zero at first). Every
local step follows g(y) − c_i + c (the correction is applied outside the client's momentum,
see :meth:`Scaffold.step_correction`). After K local steps with learning rate η the client sets
c_i⁺ = c_i − c + (x − y)/(K·η) and reports Δy = y − x and Δc_i = c_i⁺ − c_i. The server
moves x by η_g times the aggregated Δy (weighted by n_k, so that with zero control variates
SCAFFOLD is FedAvg) and sets c ← c + (1/N)·Σ Δc_i over the |S| participants, N being the
number of clients in the federation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from fedge.errors import ConfigError
from fedge.fl.aggregators import Aggregator
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy.base import Strategy
from fedge.fl.types import (
    ClientTask,
    ClientUpdate,
    Params,
    ServerState,
    flatten_by_name,
    unflatten_by_name,
)

if TYPE_CHECKING:
    from fedge.fl.local import LocalTraining

__all__ = ["Scaffold"]


class Scaffold(Strategy):
    """SCAFFOLD (option II).

    Parameters
    ----------
    num_clients:
        N, the number of clients in the federation (scales the update of c).
    server_lr:
        η_g, default 1.0.
    aggregator:
        Combines the Δy (default weighted mean by n_k).
    """

    name = "scaffold"
    accepts_partial_work = True

    def __init__(
        self,
        *,
        num_clients: int,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
    ):
        if num_clients < 1:
            raise ConfigError(f"SCAFFOLD needs num_clients >= 1, got {num_clients}")
        super().__init__(
            aggregator=aggregator, server_optimizer=ServerOptimizer("sgd", lr=server_lr)
        )
        self.num_clients = num_clients

    def init(self, params: Params) -> ServerState:
        state = super().init(params)
        c = {k: torch.zeros_like(v) for k, v in state.params.items()}
        return replace(state, extras={**state.extras, "c": c})

    def client_task(self, state: ServerState) -> ClientTask:
        return ClientTask(
            round=state.rounds_completed + 1, params=state.params, extras={"c": state.extras["c"]}
        )

    def reported_extras(self, state: ServerState) -> dict[str, Params]:
        return {"delta_c": state.extras["c"]}

    def step_correction(self, params: Params, task: ClientTask) -> Params | None:
        """c − c_i, applied as y ← y − η·(c − c_i) after each local optimizer step (outside
        momentum, as in NIID-Bench's implementation; identical to the paper's update for
        plain SGD)."""
        c = task.extras["c"]
        if task.client_state is None:
            return c
        c_i = task.client_state["c"]
        return {k: c[k] - c_i[k] for k in c}

    def finish_client(
        self, task: ClientTask, update: ClientUpdate, local: LocalTraining
    ) -> ClientUpdate:
        """Report Δc_i and keep c_i⁺ = c_i − c + (x − y)/(K·η)."""
        c = task.extras["c"]
        old = task.client_state["c"] if task.client_state is not None else None
        if update.num_steps == 0:
            delta_c = {k: torch.zeros_like(v) for k, v in c.items()}
        else:
            scale = 1.0 / (update.num_steps * local.lr)
            delta_c = {
                k: (task.params[k] - update.params[k]) * scale - c[k] for k in c
            }  # c_i⁺ − c_i
        new = {k: (old[k] if old is not None else 0) + delta_c[k] for k in c}
        return replace(update, extras={"delta_c": delta_c}, client_state={"c": new})

    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.params.items()}

        def tap(updates: Iterable[ClientUpdate]) -> Iterator[ClientUpdate]:
            for update in updates:
                for k, v in update.extras["delta_c"].items():
                    total[k].add_(v.to(torch.float64))
                yield update

        new = super().aggregate(state, tap(updates))
        c = state.extras["c"]
        c = {k: c[k] + (total[k] / self.num_clients).to(c[k].dtype) for k in c}
        return replace(new, extras={**new.extras, "c": c})

    # --- sum path: Δc_i is summed unweighted beside the weighted Δy ---------------------

    def sum_bounds(
        self, state: ServerState, clip_range: float
    ) -> dict[str, tuple[int, float, float]]:
        bounds = super().sum_bounds(state, clip_range)
        return {**bounds, "delta_c": bounds["delta"]}

    def secure_parts(
        self,
        task: ClientTask,
        update: ClientUpdate,
        weight: float,
        clip_norm: float | None = None,
    ) -> dict[str, torch.Tensor]:
        parts = super().secure_parts(task, update, weight, clip_norm)
        delta_c = update.extras["delta_c"]
        parts["delta_c"] = flatten_by_name(delta_c, task.params).to(torch.float64)
        return parts

    def apply_sums(
        self, state: ServerState, sums: dict[str, torch.Tensor], count: int
    ) -> ServerState:
        new = super().apply_sums(state, sums, count)
        c = state.extras["c"]
        step = unflatten_by_name(sums["delta_c"] / self.num_clients, c)
        c = {k: c[k] + step[k] for k in c}
        return replace(new, extras={**new.extras, "c": c})
