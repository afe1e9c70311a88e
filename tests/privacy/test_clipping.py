"""Adaptive clipping (Andrew et al. 2021): the norm moves the right way and settles at the
target quantile of a known norm distribution."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm as normal

from fedge.errors import ConfigError
from fedge.fl.strategy import FedAvg
from fedge.fl.types import ClientUpdate
from fedge.privacy import AdaptiveClipping, DPFedAvg, noise_generator, sum_noise_multiplier

W = {"w": torch.zeros(2)}


def _updates(norms, rng):
    """Updates whose deltas have the given L2 norms, in random directions."""
    out = []
    for k, n in enumerate(norms):
        direction = rng.normal(size=2)
        delta = torch.tensor(n * direction / np.linalg.norm(direction), dtype=torch.float32)
        out.append(ClientUpdate(client=k, params={"w": delta}, num_samples=1, num_steps=1))
    return out


def _dp(m, **adaptive):
    return DPFedAvg(
        FedAvg(),
        noise_multiplier=1.0,
        expected_clients=m,
        seed=0,
        adaptive=AdaptiveClipping(**adaptive),
    )


def _clip(state):
    return float(state.extras["dp"]["clip_norm"])


def test_sum_multiplier_keeps_the_total_at_z():
    assert sum_noise_multiplier(1.0, 5.0) == pytest.approx((1 - 1 / 100) ** -0.5)
    z, sb = 0.8, 0.9
    z_sum = sum_noise_multiplier(z, sb)
    assert (z_sum**-2 + (2 * sb) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(ConfigError, match=r"below 1\.2"):
        sum_noise_multiplier(1.3, 0.6)


def test_one_step_by_hand():
    rule = AdaptiveClipping(initial_norm=0.1, target_quantile=0.5, learning_rate=0.2)
    m = 20
    dp = _dp(m, initial_norm=0.1)
    norms = [0.05] * 3 + [1.0] * 17  # 3 of 20 unclipped at C = 0.1
    state = dp.aggregate(dp.init(W), _updates(norms, np.random.default_rng(0)))
    xi = float(torch.randn((), generator=noise_generator(0, 1, 1), dtype=torch.float64))
    b = (3 + (m / 20) * xi) / m
    assert _clip(state) == pytest.approx(0.1 * math.exp(-0.2 * (b - 0.5)))
    assert rule.next_norm(0.1, b) == pytest.approx(_clip(state))


@pytest.mark.parametrize(("norm", "grows"), [(10.0, True), (1e-3, False)])
def test_norm_grows_when_too_few_updates_fit_and_shrinks_when_too_many(norm, grows):
    dp = _dp(50, initial_norm=0.1, target_quantile=0.5)
    state = dp.init(W)
    rng = np.random.default_rng(1)
    for _ in range(5):
        before = _clip(state)
        state = dp.aggregate(state, _updates([norm] * 50, rng))
        assert (_clip(state) > before) is grows


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_norm_settles_at_the_target_quantile_of_lognormal_norms(gamma):
    m, mu, sigma = 100, -1.0, 0.5
    quantile = math.exp(mu + sigma * normal.ppf(gamma))
    dp = _dp(m, initial_norm=0.1, target_quantile=gamma)
    state = dp.init(W)
    rng = np.random.default_rng(42)
    history = []
    for _ in range(250):
        state = dp.aggregate(state, _updates(rng.lognormal(mu, sigma, size=m), rng))
        history.append(_clip(state))
    settled = np.exp(np.mean(np.log(history[-100:])))
    assert settled == pytest.approx(quantile, rel=0.05)
    assert history[10] < 0.8 * quantile  # it had to climb from 0.1
