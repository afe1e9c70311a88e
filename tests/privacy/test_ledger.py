"""The privacy ledger against independent computations and dp-accounting's own figures."""

import itertools

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedge.errors import ConfigError
from fedge.privacy import PrivacyLedger, calibrate_noise_multiplier, default_delta


def _gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """Full participation, by hand: replacing one client moves the clipped sum by up to
    2C, so a round is a Gaussian mechanism with RDP α·(2C)²/(2(zC)²) = 2α/z² (Mironov
    2017); rounds add up; ε = min_α RDP + log(1 − 1/α) − log(δα)/(α − 1) (Canonne,
    Kamath, Steinke 2020, Prop. 12), minimised over a fine grid of α."""
    alpha = np.linspace(1.02, 400, 400_000)
    curve = rounds * 2 * alpha / z**2
    return float((curve + np.log1p(-1 / alpha) - np.log(delta * alpha) / (alpha - 1)).min())


@pytest.mark.parametrize(("z", "rounds"), [(2.0, 10), (8.0, 3), (1.0, 1)])
def test_full_participation_matches_the_gaussian_mechanism_by_hand(z, rounds):
    ledger = PrivacyLedger(num_clients=50, clients_per_round=50, noise_multiplier=z, delta=1e-5)
    by_hand = _gaussian_epsilon(z, rounds, 1e-5)
    # dp-accounting minimises over a coarser grid of orders: never below, barely above
    assert by_hand - 1e-9 <= ledger.epsilon(rounds) <= by_hand * 1.002


def test_dp_accountings_own_gaussian_example():
    # dp-accounting's test suite: noise multiplier 4.530877117 gives exactly (1, 1e-6)-DP
    # for one Gaussian mechanism. Here it arrives through the without-replacement event
    # with the whole population sampled, and a replace-one sensitivity of 2 (z = 2σ).
    ledger = PrivacyLedger(20, 20, noise_multiplier=2 * 4.530877117, delta=1e-6)
    assert ledger.epsilon(1) == pytest.approx(1.0, abs=1e-5)


def test_sampled_rounds_match_a_fresh_accountant_composing_the_event():
    n, m, z, rounds, delta = 1000, 100, 3.0, 37, 1e-5
    ledger = PrivacyLedger(n, m, z, delta)
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        n, m, dp_accounting.GaussianDpEvent(z / 2)
    )
    accountant.compose(event, rounds)
    assert ledger.epsilon(rounds) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    assert ledger.event(rounds) == dp_accounting.SelfComposedDpEvent(event, rounds)
    # sampling a tenth of the clients costs less than sampling all of them
    assert ledger.epsilon(rounds) < PrivacyLedger(n, n, z, delta).epsilon(rounds)


def test_epsilon_grows_with_every_round():
    ledger = PrivacyLedger(200, 20, 1.5, 1e-5)
    eps = [ledger.epsilon(r) for r in range(0, 60)]
    assert eps[0] == 0
    assert all(a < b for a, b in itertools.pairwise(eps))


def test_rounds_within_a_budget():
    ledger = PrivacyLedger(200, 20, 1.5, 1e-5)
    budget = ledger.epsilon(17) + 1e-9
    assert ledger.rounds_within(budget, 100) == 17
    assert ledger.rounds_within(budget, 10) == 10
    assert ledger.rounds_within(ledger.epsilon(1) / 2, 100) == 0


def test_calibration_finds_the_smallest_noise_within_the_budget():
    z = calibrate_noise_multiplier(1000, 100, 50, epsilon=4.0, delta=1e-5)
    assert PrivacyLedger(1000, 100, z, 1e-5).epsilon(50) <= 4.0
    assert PrivacyLedger(1000, 100, z - 0.01, 1e-5).epsilon(50) > 4.0


def test_default_delta_stays_below_one_over_n():
    assert default_delta(1000) == 1e-5
    assert default_delta(10**6) == pytest.approx(10**-6.6)
    assert all(default_delta(n) < 1 / n for n in (10, 1000, 35_000, 10**7))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 20, 1.0, 1e-5), "clients per round"),
        ((10, 5, 0.0, 1e-5), "noise multiplier"),
        ((10, 5, 1.0, 1.0), "delta"),
    ],
)
def test_bad_settings_are_refused(args, match):
    with pytest.raises(ConfigError, match=match):
        PrivacyLedger(*args)
