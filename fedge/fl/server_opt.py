"""Server optimizers: how the aggregated delta moves the global model.

The aggregated client delta Δ = agg(w_k − w) is treated as a pseudo-gradient step
(Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2):

* ``sgd``:     v ← μ·v + Δ;  w ← w + η·v  (FedAvgM, Hsu et al. 2019; FedAvg with η=1, μ=0)
* ``adagrad``: m ← β1·m + (1−β1)·Δ;  v ← v + Δ²
* ``adam``:    m as above;  v ← β2·v + (1−β2)·Δ²
* ``yogi``:    m as above;  v ← v − (1−β2)·Δ²·sign(v − Δ²)
* adaptive ones then step w ← w + η·m / (√v + τ), with v starting at τ² and m at 0.

The optimizer's state lives in :attr:`ServerState.extras` under ``opt.*`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedge.errors import ConfigError
from fedge.fl.types import Params

__all__ = ["ServerOptimizer"]

OptState = dict[str, Params]


@dataclass(frozen=True)
class ServerOptimizer:
    """Server update rule; defaults reproduce FedAvg (plain ``sgd`` with lr 1)."""

    kind: Literal["sgd", "adagrad", "adam", "yogi"] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"server learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1 or not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ConfigError("server momentum, beta1 and beta2 must be in [0, 1)")
        if self.kind != "sgd" and not self.tau > 0:
            raise ConfigError(f"tau must be positive, got {self.tau}")

    def init(self, params: Params) -> OptState:
        """Initial optimizer state for a model shaped like ``params``."""
        if self.kind == "sgd":
            return {"opt.v": _zeros(params)} if self.momentum else {}
        v0 = {k: torch.full_like(t, self.tau**2) for k, t in params.items()}
        return {"opt.m": _zeros(params), "opt.v": v0}

    def step(self, params: Params, delta: Params, state: OptState) -> tuple[Params, OptState]:
        """The new global parameters and optimizer state after applying ``delta``."""
        if self.kind == "sgd":
            if not self.momentum:
                return {k: params[k] + self.lr * delta[k] for k in params}, {}
            v = {k: self.momentum * state["opt.v"][k] + delta[k] for k in params}
            return {k: params[k] + self.lr * v[k] for k in params}, {"opt.v": v}
        b1, b2 = self.beta1, self.beta2
        m = {k: b1 * state["opt.m"][k] + (1 - b1) * delta[k] for k in params}
        v = {}
        for k in params:
            sq = delta[k] * delta[k]
            old = state["opt.v"][k]
            if self.kind == "adagrad":
                v[k] = old + sq
            elif self.kind == "adam":
                v[k] = b2 * old + (1 - b2) * sq
            else:
                v[k] = old - (1 - b2) * sq * torch.sign(old - sq)
        new = {k: params[k] + self.lr * m[k] / (v[k].sqrt() + self.tau) for k in params}
        return new, {"opt.m": m, "opt.v": v}


def _zeros(params: Params) -> Params:
    return {k: torch.zeros_like(t) for k, t in params.items()}
