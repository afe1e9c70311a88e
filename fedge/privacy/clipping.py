"""Adaptive clipping: the clipping norm follows a quantile of the update norms.

Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with Adaptive
Clipping". NeurIPS 2021, Algorithm 1 with the geometric update.

A fixed clipping norm C must be guessed before training: too small and every update is
shrunk (bias), too large and the noise z·C drowns the signal. Adaptive clipping moves C
after every round towards the γ-quantile of the clients' update norms:

    b̄ = (Σ_k 1[‖Δ_k‖ ≤ C] + N(0, σ_b²)) / m        C ← C · exp(−η (b̄ − γ))

b̄ is the noisy fraction of the round's m updates that were *not* clipped. When fewer
than γ of them fit under C (b̄ < γ), C grows; when more do, it shrinks, so C settles
where a fraction γ of the norms lie below it. (Flower's adaptive clipping counts the
clipped updates instead, which moves C away from the quantile.)

The count is released too, so it costs privacy. The paper keeps the total cost that of
the noise multiplier z alone by giving the update sum a slightly larger multiplier,
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (:func:`sum_noise_multiplier`). Under the replace-one
relation of fixed-size cohorts (:mod:`fedge.privacy.ledger`) replacing one client moves
the clipped sum by at most 2C and the count by at most 1, so the pair is one Gaussian
mechanism with multiplier (4·z_Δ⁻² + σ_b⁻²)^(−1/2) = z/2 relative to those bounds:
exactly what the ledger charges for a round without adaptive clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedge.errors import ConfigError

__all__ = ["AdaptiveClipping", "sum_noise_multiplier"]


def sum_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update sum's share of a total multiplier z when
    the unclipped count gets noise of std σ_b (Andrew et al. 2021, Theorem 1).

    Raises :class:`ConfigError` unless z < 2σ_b (the count alone would spend the budget).
    """
    if noise_multiplier == 0:
        return 0.0
    if not noise_multiplier < 2 * count_std:
        raise ConfigError(
            f"adaptive clipping with count noise {count_std:g} needs a noise multiplier "
            f"below {2 * count_std:g}, got {noise_multiplier:g}: raise privacy.count_noise "
            "or the clients per round"
        )
    return (noise_multiplier**-2 - (2 * count_std) ** -2) ** -0.5


@dataclass(frozen=True)
class AdaptiveClipping:
    """The clipping-norm update rule of Andrew et al. (2021).

    Parameters
    ----------
    initial_norm:
        C before round 1 (default 0.1, the paper's C0).
    target_quantile:
        γ, the fraction of updates meant to be left unclipped (default 0.5, the median).
    learning_rate:
        η of the geometric update (default 0.2).
    count_noise:
        σ_b, std of the noise on the unclipped count; ``None`` (default) uses m/20, the
        paper's recommendation, m being the cohort size.
    """

    initial_norm: float = 0.1
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float | None = None

    def __post_init__(self) -> None:
        if not (self.initial_norm > 0 and math.isfinite(self.initial_norm)):
            raise ConfigError(f"initial clipping norm must be positive, got {self.initial_norm}")
        if not 0 < self.target_quantile < 1:
            raise ConfigError(f"target quantile must be in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise ConfigError(f"clipping learning rate must be positive, got {self.learning_rate}")
        if self.count_noise is not None and not self.count_noise > 0:
            raise ConfigError(f"count noise must be positive, got {self.count_noise}")

    def count_std(self, expected_clients: int) -> float:
        """σ_b for a cohort of ``expected_clients`` (m/20 unless given)."""
        return self.count_noise if self.count_noise is not None else expected_clients / 20

    def noisy_fraction(
        self, unclipped: int, expected_clients: int, generator: torch.Generator
    ) -> float:
        """b̄ = (unclipped + N(0, σ_b²)) / m, the noise drawn from ``generator``."""
        noise = float(torch.randn((), generator=generator, dtype=torch.float64))
        return (unclipped + self.count_std(expected_clients) * noise) / expected_clients

    def next_norm(self, norm: float, noisy_fraction: float) -> float:
        """C · exp(−η (b̄ − γ))."""
        return norm * math.exp(-self.learning_rate * (noisy_fraction - self.target_quantile))
