"""Secure aggregation as every strategy's aggregation: the sum path gives the plain
aggregate within the quantization bound (FedAvg by hand), with dropouts, with DP, on every
engine; robust aggregators are refused; an aborted round leaves the model unchanged."""

import numpy as np
import pytest
import torch

from fedge.errors import ConfigError
from fedge.fl.aggregators import Median, NormBound
from fedge.fl.strategy import FedAvg, FedAvgM, FedNova, FedOpt, FedProx, Scaffold
from fedge.fl.types import ClientTask, ClientUpdate, flatten
from fedge.models.spec import build_model
from fedge.privacy import DPFedAvg
from fedge.privacy.secagg import SecAggSettings, SecureAggregation, find_parameters
from fedge.privacy.secagg.aggregation import _simulated_dropouts
from fedge.sim.experiment import prepare, run

W = {"a": torch.tensor([0.5, -1.0, 2.0]), "b": torch.tensor([[0.25, 0.0]])}
SAMPLES = [40, 10, 25, 5, 20]
RANGE = 1.0


def _updates(seed=0, samples=SAMPLES, steps=(3, 5, 2, 4, 1), extras=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, (n, s) in enumerate(zip(samples, steps, strict=True)):
        params = {name: w + 0.3 * torch.randn(w.shape, generator=gen) for name, w in W.items()}
        ex = {}
        if extras:
            ex = {
                "delta_c": {
                    name: 0.1 * torch.randn(w.shape, generator=gen) for name, w in W.items()
                }
            }
        out.append(ClientUpdate(client=k, params=params, num_samples=n, num_steps=s, extras=ex))
    return out


def _bound(count, lo=-RANGE, hi=RANGE, bits=32):
    """Largest error of a sum of ``count`` quantized values."""
    return count * (hi - lo) / ((2**bits - 1) // count)


def test_fedavg_by_hand_through_secure_aggregation():
    settings = SecAggSettings(max_weight=max(SAMPLES))
    strategy = SecureAggregation(FedAvg(), settings, seed=1)
    state = strategy.init(W)
    new = strategy.aggregate(state, _updates())
    # Σ n_k w_k / Σ n_k, in NumPy
    ws = [flatten(u.params).numpy().astype(np.float64) for u in _updates()]
    expected = sum(n * w for n, w in zip(SAMPLES, ws, strict=True)) / sum(SAMPLES)
    got = flatten(new.params).numpy()
    # ω·Δ is exact to a few steps of the delta range, Σω to a few steps of [0, 1]
    assert np.abs(got - expected).max() < 1e-6
    graph = find_parameters(5, dropout=0.3, corrupt=0.05)
    assert strategy.last_round == {
        "degree": graph.degree,
        "threshold": graph.threshold,
        "summed": 5,
        "dropped": 0,
        "clipped_values": 0,
    }


STRATEGIES = {
    "fedavg": lambda: FedAvg(),
    "fedprox": lambda: FedProx(mu=0.1),
    "fedavgm": lambda: FedAvgM(server_lr=1.0, server_momentum=0.9),
    "fedadam": lambda: FedOpt("adam", server_lr=0.05),
    "scaffold": lambda: Scaffold(num_clients=20),
    "fednova": lambda: FedNova(momentum=0.5),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_every_sum_based_strategy_matches_its_plain_aggregate(name, dropout):
    plain = STRATEGIES[name]()
    secure = SecureAggregation(
        STRATEGIES[name](),
        # a complete graph: any 3 of the 5 clients hold enough shares
        SecAggSettings(max_weight=max(SAMPLES), simulated_dropout=dropout, degree=4),
        seed=3,
    )
    updates = _updates(extras=name == "scaffold")
    state = plain.init(W)
    for r in (1, 2):  # a second round exercises server optimizer state
        dropped = _simulated_dropouts([str(u.client) for u in updates], dropout, 3, r)
        assert len(dropped) == int(dropout * len(updates))
        survivors = [u for u in updates if str(u.client) not in dropped]
        expected = plain.aggregate(state, survivors)
        got = secure.aggregate(state, updates)
        for key in W:
            diff = (got.params[key] - expected.params[key]).abs().max().item()
            assert diff < 1e-5, f"{name}: {key} differs by {diff}"
        assert got.extras.keys() == expected.extras.keys()
        for group, tensors in expected.extras.items():
            for key, value in tensors.items():
                assert torch.allclose(got.extras[group][key], value, atol=1e-5), (group, key)
        assert secure.last_round["summed"] == len(survivors)
        state = expected


def test_dp_under_secure_aggregation_adds_the_same_noise_to_the_unmasked_sum():
    def dp():
        return DPFedAvg(FedAvg(), noise_multiplier=1.0, expected_clients=5, seed=7, clip_norm=0.5)

    plain = dp()
    secure = SecureAggregation(dp(), SecAggSettings(weighting="uniform"), seed=7)
    state = plain.init(W)
    expected = plain.aggregate(state, _updates())
    got = secure.aggregate(state, _updates())
    for key in W:
        assert torch.allclose(got.params[key], expected.params[key], atol=1e-6)
    # the clipped deltas lie in [-C, C]: the layout says so
    assert secure.last_round["clipped_values"] == 0


def test_values_outside_the_range_are_counted_not_hidden():
    strategy = SecureAggregation(FedAvg(), SecAggSettings(clip_range=0.01, max_weight=10), seed=0)
    strategy.aggregate(strategy.init(W), _updates())
    outside = capped = 0
    for u in _updates():
        weight = min(u.num_samples, 10) / 10
        delta = (flatten(u.params) - flatten(W)) * weight
        outside += int((delta.abs() > 0.01).sum())
        capped += u.num_samples > 10
    assert capped == 3 and outside > 20
    assert strategy.last_round["clipped_values"] == outside + capped


@pytest.mark.parametrize("aggregator", [Median(), NormBound(max_norm=1.0)])
def test_aggregators_that_need_individual_updates_are_refused(aggregator):
    with pytest.raises(ConfigError, match="secure aggregation needs the mean aggregator"):
        SecureAggregation(FedAvg(aggregator=aggregator), SecAggSettings(max_weight=1), seed=0)


def test_sample_weighting_without_a_bound_is_refused_on_a_server():
    strategy = SecureAggregation(FedAvg(), SecAggSettings(), seed=0)
    with pytest.raises(ConfigError, match="needs max_weight"):
        strategy.aggregate(strategy.init(W), _updates())


SECURE = {"dp": "none", "secure_aggregation": {"simulated_dropout": 0.25}}


def test_a_simulation_with_secure_aggregation_learns_and_reports_each_round(digits):
    plain = run(prepare(digits(rounds=4, engine="sequential")))
    secure = run(prepare(digits(rounds=4, engine="sequential", privacy=SECURE)))
    for m in secure.history:
        assert m["secure_aggregation"]["summed"] == 3 and m["secure_aggregation"]["dropped"] == 1
    accuracy = [m["test_accuracy"] for m in secure.history]
    assert accuracy[-1] > accuracy[0] + 0.2
    assert abs(secure.history[-1]["test_accuracy"] - plain.history[-1]["test_accuracy"]) < 0.2


def test_same_model_on_the_sequential_and_vectorized_engines(digits):
    common = {"rounds": 2, "privacy": {**SECURE, "secure_aggregation": {"simulated_dropout": 0.0}}}
    seq = run(prepare(digits(engine="sequential", **common)))
    vec = run(prepare(digits(engine="vectorized", **common)))
    for name, value in seq.state.params.items():
        assert (value - vec.state.params[name]).abs().max().item() <= 1e-4


def test_too_many_dropouts_abort_the_round_and_leave_the_model_unchanged(digits):
    fed = prepare(
        digits(
            rounds=2,
            engine="sequential",
            privacy={
                "dp": "none",
                "secure_aggregation": {"simulated_dropout": 0.75},
            },
        )
    )
    initial = dict(build_model(fed.spec, seed=0).named_parameters())
    result = run(fed)
    for m in result.history:
        assert "aborted" in m["secure_aggregation"]
        assert "at least 3 are needed" in m["secure_aggregation"]["aborted"]
    for name, value in result.state.params.items():
        assert torch.equal(value, initial[name])
    assert result.state.rounds_completed == 0


@pytest.mark.parametrize(
    ("privacy", "match"),
    [
        ({"dp": "none"}, "protects nothing"),
        ({"dp": "none", "noise_multiplier": 1.0, "secure_aggregation": {}}, "takes no DP settings"),
    ],
)
def test_privacy_sections_that_make_no_sense_are_refused(digits, privacy, match):
    with pytest.raises(Exception, match=match):
        digits(privacy=privacy)


def test_robust_aggregator_in_the_experiment_file_is_refused(digits):
    with pytest.raises(ConfigError, match="secure aggregation needs the mean aggregator"):
        prepare(
            digits(strategy={"name": "fedavg", "aggregator": {"name": "median"}}, privacy=SECURE)
        )


def test_the_sum_path_does_not_depend_on_the_order_params_arrive_in():
    # a device reads the model from safetensors, whose tensors come in the file's order
    strategy = Scaffold(num_clients=20)
    state = strategy.init(W)
    updates = _updates(extras=True)
    expected = strategy.aggregate(state, updates)
    task = strategy.client_task(state)
    reordered = ClientTask(
        round=task.round,
        params={k: task.params[k] for k in reversed(list(task.params))},
        extras=task.extras,
    )
    sums = None
    for u in updates:
        weight = u.num_samples / max(SAMPLES)
        parts = strategy.secure_parts(reordered, u, weight)
        sums = parts if sums is None else {k: sums[k] + v for k, v in parts.items()}
    got = strategy.apply_sums(state, sums, len(updates))
    for key in W:
        assert torch.allclose(got.params[key], expected.params[key], atol=1e-6)
        assert torch.allclose(got.extras["c"][key], expected.extras["c"][key], atol=1e-6)
