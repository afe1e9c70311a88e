import pytest
import torch

from fedge.config import AttackConfig
from fedge.data.load import load_data
from fedge.errors import ConfigError
from fedge.fl.types import ClientTask, ClientUpdate
from fedge.sim.adversity import (
    attack_update,
    flip_labels,
    malicious_clients,
    straggler_budgets,
)
from fedge.sim.experiment import prepare, run

X = {"w": torch.tensor([1.0, 1.0])}
HONEST = ClientUpdate(3, {"w": torch.tensor([2.0, 0.0])}, num_samples=5, num_steps=2)
TASK = ClientTask(round=4, params=X)


def test_malicious_clients_are_a_fixed_seeded_fraction():
    a = malicious_clients(50, 0.2, seed=1)
    assert len(a) == 10 and a == malicious_clients(50, 0.2, seed=1)
    assert a != malicious_clients(50, 0.2, seed=2)
    assert all(0 <= k < 50 for k in a)


def test_label_flip_maps_y_to_c_minus_1_minus_y_on_chosen_rows():
    y = torch.tensor([0, 1, 2, 9, 4])
    out = flip_labels(y, [torch.tensor([0, 3])], num_classes=10)
    assert out.tolist() == [9, 1, 2, 0, 4]
    assert y.tolist() == [0, 1, 2, 9, 4]


@pytest.mark.parametrize(
    ("kind", "scale", "expected"),
    [
        ("sign_flip", None, [0.0, 2.0]),
        ("sign_flip", 3.0, [-2.0, 4.0]),
        ("scale", None, [11.0, -9.0]),
    ],
)
def test_update_attacks_by_hand(kind, scale, expected):
    out = attack_update(HONEST, TASK, AttackConfig(kind=kind, scale=scale), seed=0)
    assert out.params["w"].tolist() == expected
    assert out.num_samples == HONEST.num_samples


def test_gaussian_attack_is_seeded():
    attack = AttackConfig(kind="gaussian", std=0.5)
    a = attack_update(HONEST, TASK, attack, seed=0).params["w"]
    b = attack_update(HONEST, TASK, attack, seed=0).params["w"]
    c = attack_update(HONEST, TASK, attack, seed=1).params["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, HONEST.params["w"])


def test_gaussian_attack_is_centred_on_the_global_model_with_the_configured_std():
    n, std = 40_000, 0.5
    x = {"a": torch.full((n,), 1.0), "b": torch.full((n // 2, 2), -3.0)}
    # the honest update moved far (Δ = +2) so noise around it, not around x, is caught
    honest = ClientUpdate(7, {k: v + 2.0 for k, v in x.items()}, num_samples=5, num_steps=2)
    out = attack_update(
        honest, ClientTask(round=4, params=x), AttackConfig(kind="gaussian", std=std), seed=0
    )
    noise = {k: (out.params[k] - x[k]).double().reshape(-1) for k in x}
    # Bounds at 5 standard errors of each estimate over n = 40,000 draws: the sample mean
    # has s.e. σ/√n = 0.0025, the sample std σ/√(2n) ≈ 0.0018, a correlation 1/√n = 0.005.
    # A correct sampler leaves them with probability ~1e-6 (the seed is fixed anyway); a
    # wrong centre (x + Δ), scale (std² = 0.25, 2·std) or noise reused across tensors
    # lands at least 40 standard errors away.
    for k, e in noise.items():
        assert abs(float(e.mean())) < 5 * std / n**0.5, k
        assert abs(float(e.std()) - std) < 5 * std / (2 * n) ** 0.5, k
    corr = float(torch.corrcoef(torch.stack([noise["a"], noise["b"]]))[0, 1])
    assert abs(corr) < 5 / n**0.5
    assert all(out.params[k].shape == x[k].shape and out.params[k].dtype == x[k].dtype for k in x)


def test_straggler_budgets():
    budgets = straggler_budgets([3, 5, 8, 9, 12], 0.5, [10, 10, 1, 10, 4], seed=0, round=1)
    assert len(budgets) == 2  # floor(0.5 * 5)
    full = dict(zip([3, 5, 8, 9, 12], [10, 10, 1, 10, 4], strict=True))
    for k, b in budgets.items():
        assert 1 <= b < full[k] or b == full[k] == 1
    assert budgets == straggler_budgets([3, 5, 8, 9, 12], 0.5, [10, 10, 1, 10, 4], seed=0, round=1)
    assert straggler_budgets([1, 2], 0.4, [5, 5], seed=0, round=1) == {}


def test_stragglers_are_dropped_for_fedavg_and_kept_for_fedprox(digits):
    system = {"stragglers": 0.5}
    avg = run(prepare(digits(rounds=2, system=system))).history
    assert [(m["clients"], m["dropped"]) for m in avg] == [(2, 2), (2, 2)]
    prox = run(prepare(digits(rounds=2, system=system, strategy={"name": "fedprox"}))).history
    assert [(m["clients"], m["stragglers"], m["dropped"]) for m in prox] == [(4, 2, 0)] * 2
    forced = digits(rounds=1, system={"stragglers": 0.5, "policy": "partial"})
    assert run(prepare(forced)).history[0]["clients"] == 4


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "scaffold"},
        {"name": "fednova"},
        {"name": "fedadam", "server_lr": 0.1},
        {"name": "fedyogi", "server_lr": 0.1},
        {"name": "fedadagrad", "server_lr": 0.1},
        {"name": "fedavgm"},
        {"name": "fedprox", "mu": 0.1},
        {"name": "fedavg", "aggregator": {"name": "trimmed_mean", "beta": 0.25}},
        {"name": "fedavg", "aggregator": {"name": "multi_krum", "f": 1, "m": 2}},
        {"name": "fedavg", "aggregator": {"name": "median", "clip_norm": 5.0}},
    ],
)
def test_every_strategy_runs_from_a_config_and_learns(digits, strategy):
    server = {"clients_per_round": 8}
    history = run(prepare(digits(rounds=5, strategy=strategy, server=server))).history
    # chance is 0.1; after 5 rounds the slowest here (multi-Krum keeping 2 of 8 skewed
    # updates, FedAdagrad at server lr 0.1) reach about 0.3
    assert history[-1]["test_accuracy"] > 0.2


def test_multi_krum_needs_m(digits):
    with pytest.raises(ConfigError, match="multi_krum needs m"):
        prepare(digits(strategy={"name": "fedavg", "aggregator": {"name": "multi_krum"}}))


def test_krum_needs_a_large_enough_cohort(digits):
    krum = {"name": "fedavg", "aggregator": {"name": "krum", "f": 1}}
    with pytest.raises(
        ConfigError, match=r"krum with f=1 needs more than 4 client updates per round"
    ):
        prepare(digits(strategy=krum))


def test_median_withstands_a_scaling_attack_that_breaks_the_mean(digits):
    attack = {"kind": "scale", "fraction": 0.25, "scale": 1000.0}
    server = {"clients_per_round": 8}
    mean = run(prepare(digits(rounds=3, attack=attack, server=server))).history[-1]
    median = run(
        prepare(
            digits(
                rounds=3,
                attack=attack,
                server=server,
                strategy={"name": "fedavg", "aggregator": {"name": "median"}},
            )
        )
    ).history[-1]
    assert median["test_accuracy"] > 0.35  # chance is 0.1; the clean run reaches ~0.6
    assert mean["test_accuracy"] < median["test_accuracy"] - 0.2


def test_label_flipping_poisons_only_the_attackers_training_labels(digits):
    config = digits(attack={"kind": "label_flip", "fraction": 0.25})
    # an independent copy of the labels, taken before prepare() could touch anything
    clean = load_data(config.data, seed=config.seed)
    y_true, y_test = clean.train.y.clone(), clean.test.y.clone()
    fed = prepare(config)
    assert len(fed.malicious) == 2
    for k in range(8):
        rows = fed.clients.indices[k]
        flipped = fed.clients.y[rows] != y_true[rows]
        if k in fed.malicious:
            assert torch.equal(fed.clients.y[rows], 9 - y_true[rows])
        else:
            assert not flipped.any()
    assert torch.equal(fed.data.train.y, y_true)  # the pooled training labels stay clean
    assert torch.equal(fed.data.test.y, y_test)  # and so does the test set
