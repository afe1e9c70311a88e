"""The Gaussian noise has the standard deviation the mechanism promises (chi-square test
with a fixed seed)."""

import pytest
import torch
from scipy.stats import chi2

from fedge.fl.strategy import FedAvg
from fedge.fl.types import ClientUpdate
from fedge.privacy import AdaptiveClipping, DPFedAvg, GaussianSum

N = 100_000  # coordinates: one draw gives N independent noise samples


def _within_chi2(values: torch.Tensor, std: float) -> tuple[float, float, float]:
    """Σx²/σ² against the 1e-4 and 1 − 1e-4 quantiles of χ²(n) (the mean is known: 0)."""
    n = values.numel()
    stat = float((values.double() ** 2).sum()) / std**2
    return chi2.ppf(1e-4, n), stat, chi2.ppf(1 - 1e-4, n)


def test_noise_on_the_average_has_std_sigma_over_m():
    query = GaussianSum(clip_norm=1.0, noise_std=0.7, expected_clients=5, seed=3, round=1)
    out = query([({"w": torch.zeros(N)}, 1.0)])["w"]
    lo, stat, hi = _within_chi2(out, 0.7 / 5)
    assert lo < stat < hi
    assert abs(float(out.double().mean())) < 4 * 0.7 / 5 / N**0.5


@pytest.mark.parametrize(("clip", "z"), [(0.5, 1.0), (2.0, 0.3)])
def test_fixed_clipping_noise_is_z_times_the_clip_norm(clip, z):
    w = {"w": torch.zeros(N)}
    dp = DPFedAvg(FedAvg(), noise_multiplier=z, expected_clients=4, seed=1, clip_norm=clip)
    update = ClientUpdate(client=0, params=dict(w), num_samples=1, num_steps=1)
    out = dp.aggregate(dp.init(w), [update]).params["w"]
    lo, stat, hi = _within_chi2(out, z * clip / 4)
    assert lo < stat < hi


def test_adaptive_clipping_gives_the_sum_the_adjusted_multiplier():
    # z = 1 with σ_b = 0.6: z_Δ = (1 − 1/1.44)^(−1/2) ≈ 1.809, far from z itself
    w = {"w": torch.zeros(N)}
    dp = DPFedAvg(
        FedAvg(),
        noise_multiplier=1.0,
        expected_clients=4,
        seed=2,
        adaptive=AdaptiveClipping(initial_norm=0.3, count_noise=0.6),
    )
    z_sum = (1 - 1 / 1.2**2) ** -0.5
    assert dp.sum_noise_multiplier == pytest.approx(z_sum)
    update = ClientUpdate(client=0, params=dict(w), num_samples=1, num_steps=1)
    out = dp.aggregate(dp.init(w), [update]).params["w"]
    lo, stat, hi = _within_chi2(out, z_sum * 0.3 / 4)
    assert lo < stat < hi
