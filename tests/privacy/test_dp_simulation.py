"""DP-FedAvg in a whole simulation: the ledger in the outputs, the budget stop, the same
model on every engine, and configurations that are refused."""

import itertools
import json

import dp_accounting
import pytest
import tomli_w
from dp_accounting import rdp
from typer.testing import CliRunner

from fedge.cli.main import app
from fedge.config import parse_config
from fedge.errors import ConfigError
from fedge.privacy import DPFedAvg
from fedge.sim.experiment import prepare, run

FIXED = {"clip_norm": 1.0, "noise_multiplier": 1.0}


def _epsilons(n, m, z, delta, rounds):
    """ε after each of ``rounds`` rounds, composing one event per round on one accountant."""
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        n, m, dp_accounting.GaussianDpEvent(z / 2)
    )
    out = []
    for _ in range(rounds):
        accountant.compose(event)
        out.append(accountant.get_epsilon(delta))
    return out


def test_budget_stop_halts_at_the_last_round_that_fits(digits, tmp_path):
    # digits_config: 8 clients, 4 per round
    eps = _epsilons(8, 4, 1.0, 1e-5, 6)
    target = (eps[2] + eps[3]) / 2  # rounds 1-3 fit, round 4 would not
    expected = max(r for r in range(1, 7) if eps[r - 1] <= target)
    config = digits(rounds=6, engine="sequential", privacy={**FIXED, "target_epsilon": target})
    cfg = tmp_path / "dp.toml"
    cfg.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", str(cfg), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == list(range(1, expected + 1)) == [1, 2, 3]
    assert [m["epsilon"] for m in metrics] == pytest.approx(eps[:expected], rel=1e-9)
    assert metrics[-1]["test_accuracy"] is not None  # the last round is evaluated
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert summary["rounds"] == expected
    assert privacy["epsilon"] == pytest.approx(eps[expected - 1], rel=1e-9)
    assert privacy["delta"] == 1e-5
    assert "user-level" in privacy["guarantee"] and "over the 8 clients" in privacy["guarantee"]
    assert f"allows {expected} of the 6 planned rounds" in privacy["budget_stop"]
    assert "stopped early" in result.output and "user-level" in result.output


def test_epsilon_is_in_every_round_and_grows(digits):
    result = run(prepare(digits(rounds=4, privacy=FIXED)))
    eps = [m["epsilon"] for m in result.history]
    assert len(eps) == 4 and all(a < b for a, b in itertools.pairwise(eps))
    assert eps == pytest.approx(_epsilons(8, 4, 1.0, 1e-5, 4), rel=1e-9)


def test_a_target_alone_calibrates_the_noise_for_all_rounds(digits):
    fed = prepare(digits(rounds=5, privacy={"clip_norm": 1.0, "target_epsilon": 30.0}))
    plan = fed.privacy
    assert plan.calibrated and plan.rounds == 5
    assert 29.5 < plan.epsilon(5) <= 30.0
    assert isinstance(fed.strategy, DPFedAvg)
    assert fed.strategy.noise_multiplier == plan.noise_multiplier


PRIVATE = [
    {"clip_norm": 0.5, "noise_multiplier": 0.8},
    {"adaptive_clipping": True, "noise_multiplier": 0.8, "count_noise": 1.0},
]


@pytest.mark.parametrize("privacy", PRIVATE, ids=["fixed", "adaptive"])
def test_same_model_on_the_sequential_and_vectorized_engines(digits, privacy):
    common = {
        "rounds": 3,
        "strategy": {"name": "fedavgm", "server_lr": 1.0, "server_momentum": 0.5},
        "client": {"epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9},
        "privacy": privacy,
    }
    seq = run(prepare(digits(engine="sequential", **common)))
    vec = run(prepare(digits(engine="vectorized", **common)))
    for name, value in seq.state.params.items():
        diff = (value - vec.state.params[name]).abs().max().item()
        assert diff <= 1e-4, f"{name} differs by {diff}"
    assert seq.state.extras.keys() == vec.state.extras.keys()
    if "dp" in seq.state.extras:
        clip = [m["clip_norm"] for m in seq.history]
        assert clip == pytest.approx([m["clip_norm"] for m in vec.history], rel=1e-9)
        assert clip[0] == 0.1 and len(set(clip)) == 3  # C0, then it moves every round


@pytest.mark.parametrize(
    ("strategy", "match"),
    [
        ({"name": "fedavg", "aggregator": {"name": "median"}}, "needs the mean aggregator"),
        ({"name": "fedavg", "aggregator": {"name": "trimmed_mean"}}, "needs the mean aggregator"),
        ({"name": "fedavg", "aggregator": {"name": "krum", "f": 0}}, "needs the mean aggregator"),
        ({"name": "fednova"}, "FedNova"),
        ({"name": "scaffold"}, "SCAFFOLD"),
    ],
)
def test_dp_with_what_it_cannot_cover_is_refused(digits, strategy, match):
    with pytest.raises(ConfigError, match=match):
        prepare(digits(strategy=strategy, privacy=FIXED))


@pytest.mark.parametrize(
    ("privacy", "match"),
    [
        ({"clip_norm": 1.0}, "noise_multiplier, privacy.target_epsilon or both"),
        ({"noise_multiplier": 1.0}, "fixed clipping needs privacy.clip_norm"),
        ({**FIXED, "clip_lr": 0.1}, "clip_lr needs adaptive_clipping"),
        ({**FIXED, "dp": "distributed"}, "privacy.dp"),
        ({**FIXED, "delta": 0}, "privacy.delta"),
        ({**FIXED, "epsilon": 1}, "unknown key"),
    ],
)
def test_bad_privacy_sections_fail_with_one_line(digits, privacy, match):
    raw = digits().model_dump(mode="json", exclude_none=True)
    with pytest.raises(ConfigError, match=match) as info:
        parse_config({**raw, "privacy": privacy})
    assert "\n" not in str(info.value)


def test_budget_too_small_for_one_round_or_for_adaptive_clipping(digits):
    with pytest.raises(ConfigError, match="does not allow a single round"):
        prepare(digits(privacy={**FIXED, "target_epsilon": 0.01}))
    with pytest.raises(ConfigError, match=r"noise multiplier below 0\.4"):  # σ_b = m/20 = 0.2
        prepare(digits(privacy={"adaptive_clipping": True, "noise_multiplier": 1.0}))
