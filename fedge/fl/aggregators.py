"""How the server combines client deltas Δ_k = w_k − w into one.

Every strategy aggregates deltas through an :class:`Aggregator`, so the robust rules below
drop into any of them. Each aggregator takes ``(delta, weight)`` pairs, with weight n_k.

* :class:`WeightedMean` — Σ n_k Δ_k / Σ n_k with a running float64 sum (FedAvg).
* :class:`Median` — coordinate-wise median (Yin et al., "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018).
* :class:`TrimmedMean` — coordinate-wise mean after dropping the ⌊βK⌋ largest and smallest
  values (Yin et al. 2018).
* :class:`Krum` — the update(s) closest to their K−f−2 nearest neighbours; ``m > 1`` is
  Multi-Krum, the mean of the m best (Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017).
* :class:`NormBound` — scales every delta down to an L2 norm of at most ``max_norm`` before
  an inner aggregator (Sun et al., "Can You Really Backdoor Federated Learning?", 2019).

The robust rules ignore the sample counts n_k: weighting by a count the client reports
would let an attacker buy influence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.types import Params, flatten, unflatten

__all__ = ["Aggregator", "Krum", "Median", "NormBound", "TrimmedMean", "WeightedMean"]

Weighted = Iterable[tuple[Params, float]]


class Aggregator(Protocol):
    """Combines weighted client deltas into one delta."""

    def __call__(self, deltas: Weighted) -> Params: ...


def _stack(deltas: Weighted) -> tuple[torch.Tensor, Params]:
    rows, like = [], None
    for delta, _ in deltas:
        like = like or delta
        rows.append(flatten(delta).to(torch.float64))
    if like is None:
        raise FedgeError("no client update to aggregate in this round")
    return torch.stack(rows), like


@dataclass(frozen=True)
class WeightedMean:
    """Σ w_k Δ_k / Σ w_k, streamed: memory does not grow with the number of clients."""

    def __call__(self, deltas: Weighted) -> Params:
        acc: dict[str, torch.Tensor] | None = None
        like: Params = {}
        total = 0.0
        for delta, weight in deltas:
            if acc is None:
                like = delta
                acc = {k: v.detach().to(torch.float64) * weight for k, v in delta.items()}
            else:
                for k, v in delta.items():
                    acc[k].add_(v.detach().to(torch.float64), alpha=weight)
            total += weight
        if acc is None or total <= 0:
            raise FedgeError("no client update to aggregate in this round")
        return {k: (v / total).to(like[k].dtype) for k, v in acc.items()}


@dataclass(frozen=True)
class Median:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""

    def __call__(self, deltas: Weighted) -> Params:
        stacked, like = _stack(deltas)
        ordered = stacked.sort(dim=0).values
        k = ordered.shape[0]
        mid = ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2
        return unflatten(mid, like)


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise mean without the ⌊beta·K⌋ largest and ⌊beta·K⌋ smallest values."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ConfigError(f"trimmed mean beta must be in [0, 0.5), got {self.beta}")

    def __call__(self, deltas: Weighted) -> Params:
        stacked, like = _stack(deltas)
        k = stacked.shape[0]
        cut = math.floor(self.beta * k)
        kept = stacked.sort(dim=0).values[cut : k - cut]
        return unflatten(kept.mean(dim=0), like)


@dataclass(frozen=True)
class Krum:
    """Krum (``m = 1``) or Multi-Krum (mean of the ``m`` best) tolerating ``f`` attackers.

    Needs K > 2f + 2 updates.
    """

    f: int = 1
    m: int = 1

    def __post_init__(self) -> None:
        if self.f < 0 or self.m < 1:
            raise ConfigError(f"krum needs f >= 0 and m >= 1, got f={self.f}, m={self.m}")

    def select(self, stacked: torch.Tensor) -> torch.Tensor:
        """Indices of the selected rows, best first."""
        k = stacked.shape[0]
        if k <= 2 * self.f + 2:
            raise FedgeError(
                f"krum with f={self.f} needs more than {2 * self.f + 2} updates, got {k}"
            )
        if self.m > k:
            raise FedgeError(f"multi-krum selects m={self.m} of only {k} updates")
        dist = torch.cdist(stacked, stacked).pow(2)
        dist.fill_diagonal_(float("inf"))
        nearest = dist.topk(k - self.f - 2, dim=1, largest=False).values
        return nearest.sum(dim=1).argsort()[: self.m]

    def __call__(self, deltas: Weighted) -> Params:
        stacked, like = _stack(deltas)
        return unflatten(stacked[self.select(stacked)].mean(dim=0), like)


@dataclass(frozen=True)
class NormBound:
    """Scale each delta to an L2 norm of at most ``max_norm``, then aggregate with ``inner``."""

    max_norm: float
    inner: Aggregator = field(default_factory=WeightedMean)

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise ConfigError(f"norm bound must be positive, got {self.max_norm}")

    def _clipped(self, deltas: Weighted) -> Weighted:
        for delta, weight in deltas:
            norm = float(flatten(delta).to(torch.float64).norm())
            scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
            yield ({k: v * scale for k, v in delta.items()} if scale < 1 else delta), weight

    def __call__(self, deltas: Weighted) -> Params:
        return self.inner(self._clipped(deltas))
