"""DP-FedAvg's aggregation by hand: clipping, equal weights, division by m, zero updates,
deterministic noise, and the strategies it refuses."""

import math
import random

import numpy as np
import pytest
import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.aggregators import Krum, Median, NormBound, TrimmedMean, WeightedMean
from fedge.fl.strategy import FedAvg, FedAvgM, FedNova, FedProx, Scaffold
from fedge.fl.types import ClientUpdate, ServerState
from fedge.privacy import AdaptiveClipping, ClipTally, DPFedAvg, GaussianSum

W = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
# Deltas (flattened a then b): norm 5 (clipped to 1), norm 0.5 (kept), zero (kept).
DELTAS = [[3.0, 0.0, 4.0], [0.3, 0.4, 0.0], [0.0, 0.0, 0.0]]
SAMPLES = [1000, 3, 7]  # sample counts must not matter


def _updates(deltas=DELTAS, samples=SAMPLES):
    out = []
    for k, (d, n) in enumerate(zip(deltas, samples, strict=True)):
        params = {"a": W["a"] + torch.tensor(d[:2]), "b": W["b"] + torch.tensor([[d[2]]])}
        out.append(ClientUpdate(client=k, params=params, num_samples=n, num_steps=1))
    return out


def _reference(deltas, clip, m):
    """Σ_k Δ_k·min(1, C/‖Δ_k‖) / m with equal weights, in NumPy."""
    total = np.zeros(len(deltas[0]))
    for d in deltas:
        d = np.asarray(d, dtype=np.float64)
        norm = np.linalg.norm(d)
        total += d if norm <= clip else d * clip / norm
    return total / m


def _flat(params):
    return torch.cat([params["a"], params["b"].reshape(-1)]).tolist()


def test_noiseless_aggregate_clips_weighs_equally_and_divides_by_m():
    dp = DPFedAvg(FedAvg(), noise_multiplier=0.0, expected_clients=4, seed=0, clip_norm=1.0)
    state = dp.aggregate(dp.init(W), _updates())
    # (0.6, 0, 0.8) + (0.3, 0.4, 0) + 0, over m = 4 (one of the 4 expected never came)
    expected = np.array([1.0, 2.0, 0.5]) + np.array([0.225, 0.1, 0.2])
    assert _flat(state.params) == pytest.approx(expected.tolist(), abs=1e-6)
    assert _flat(dp.combine(dp.init(W), _updates())) == pytest.approx(
        _reference(DELTAS, 1.0, 4).tolist(), abs=1e-6
    )
    assert state.rounds_completed == 1


def test_server_optimizer_applies_the_noisy_average():
    inner = FedAvgM(server_lr=2.0, server_momentum=0.0)
    dp = DPFedAvg(inner, noise_multiplier=0.0, expected_clients=3, seed=0, clip_norm=0.5)
    state = dp.aggregate(dp.init(W), _updates())
    expected = np.array([1.0, 2.0, 0.5]) + 2.0 * _reference(DELTAS, 0.5, 3)
    assert _flat(state.params) == pytest.approx(expected.tolist(), abs=1e-6)


def test_zero_updates_only_give_a_zero_step_and_count_as_unclipped():
    tally = ClipTally()
    query = GaussianSum(clip_norm=1.0, noise_std=0.0, expected_clients=2, tally=tally)
    zero = {"a": torch.zeros(2), "b": torch.zeros(1, 1)}
    out = query([(zero, 5.0), (zero, 1.0)])
    assert all(bool(torch.isfinite(v).all()) and not v.any() for v in out.values())
    assert (tally.clients, tally.unclipped) == (2, 2)


def test_tally_counts_updates_at_or_under_the_norm():
    tally = ClipTally()
    query = GaussianSum(clip_norm=0.5, noise_std=0.0, expected_clients=3, tally=tally)
    deltas = [[3.0, 0.0, 4.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    query([({"x": torch.tensor(d)}, 1.0) for d in deltas])
    assert (tally.clients, tally.unclipped) == (3, 2)  # norm 0.5 sits exactly on C


def test_no_update_is_an_error():
    with pytest.raises(FedgeError, match="no client update"):
        GaussianSum(clip_norm=1.0, noise_std=1.0, expected_clients=2)([])


def test_noise_depends_only_on_seed_and_round():
    dp = DPFedAvg(FedAvg(), noise_multiplier=1.0, expected_clients=3, seed=7, clip_norm=1.0)
    state = dp.init(W)
    first = dp.aggregate(state, _updates()).params
    again = dp.aggregate(state, _updates()).params  # a restart re-aggregating the round
    shuffled = _updates()
    random.Random(0).shuffle(shuffled)
    reordered = dp.aggregate(state, shuffled).params
    for name in W:
        assert torch.equal(first[name], again[name])
        torch.testing.assert_close(first[name], reordered[name], rtol=0, atol=1e-6)
    later = dp.aggregate(ServerState(params=W, rounds_completed=1), _updates()).params
    other = DPFedAvg(FedAvg(), noise_multiplier=1.0, expected_clients=3, seed=8, clip_norm=1.0)
    reseeded = other.aggregate(state, _updates()).params
    assert not torch.equal(first["a"], later["a"])
    assert not torch.equal(first["a"], reseeded["a"])


def test_the_wrapped_strategy_is_not_changed():
    inner = FedProx(mu=0.1)
    dp = DPFedAvg(inner, noise_multiplier=1.0, expected_clients=3, seed=0, clip_norm=1.0)
    dp.aggregate(dp.init(W), _updates())
    assert isinstance(inner.aggregator, WeightedMean)
    assert dp.name == "fedprox" and dp.accepts_partial_work


def test_adaptive_clip_norm_lives_in_the_server_state():
    dp = DPFedAvg(
        FedAvg(),
        noise_multiplier=0.5,
        expected_clients=3,
        seed=0,
        adaptive=AdaptiveClipping(initial_norm=0.25, count_noise=1.0),
    )
    state = dp.init(W)
    assert float(state.extras["dp"]["clip_norm"]) == 0.25
    after = dp.aggregate(state, _updates())
    assert after.extras["dp"]["clip_norm"].dtype == torch.float64
    assert float(after.extras["dp"]["clip_norm"]) != 0.25
    # a restart resumes from the saved norm, not from the initial one
    assert dp.current_clip_norm(after) == float(after.extras["dp"]["clip_norm"])


@pytest.mark.parametrize(
    "aggregator", [Median(), TrimmedMean(0.1), Krum(f=1)], ids=lambda a: type(a).__name__
)
def test_robust_aggregators_are_refused(aggregator):
    with pytest.raises(ConfigError, match="needs the mean aggregator"):
        DPFedAvg(
            FedAvg(aggregator=aggregator),
            noise_multiplier=1.0,
            expected_clients=4,
            seed=0,
            clip_norm=1.0,
        )


@pytest.mark.parametrize(
    ("inner", "match"),
    [
        (FedNova(), "FedNova"),
        (Scaffold(num_clients=10), "SCAFFOLD"),
        (FedAvg(aggregator=NormBound(1.0)), "remove strategy.aggregator.clip_norm"),
    ],
)
def test_strategies_the_noise_would_not_cover_are_refused(inner, match):
    with pytest.raises(ConfigError, match=match):
        DPFedAvg(inner, noise_multiplier=1.0, expected_clients=4, seed=0, clip_norm=1.0)


def test_one_clipping_mode_is_required():
    with pytest.raises(ConfigError, match="exactly one"):
        DPFedAvg(FedAvg(), noise_multiplier=1.0, expected_clients=4, seed=0)
    with pytest.raises(ConfigError, match="exactly one"):
        DPFedAvg(
            FedAvg(),
            noise_multiplier=1.0,
            expected_clients=4,
            seed=0,
            clip_norm=1.0,
            adaptive=AdaptiveClipping(),
        )
    assert math.isclose(
        DPFedAvg(
            FedAvg(), noise_multiplier=1.0, expected_clients=4, seed=0, clip_norm=2.0
        ).sum_noise_multiplier,
        1.0,
    )
