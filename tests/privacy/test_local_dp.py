"""Local DP: each client clips and noises its own update (noise std and independence by
statistical tests, clipping by hand), the server averages with equal weights, and the
ledger composes one Gaussian mechanism per round without amplification, checked against
dp-accounting directly."""

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp

from fedge.errors import ConfigError
from fedge.fl.local import LocalTraining
from fedge.fl.strategy import FedAvg, Scaffold
from fedge.fl.types import ClientTask, ClientUpdate, flatten_by_name
from fedge.privacy import LocalDP
from fedge.privacy.secagg import SecAggSettings, SecureAggregation
from fedge.sim.experiment import prepare, run

LOCAL = LocalTraining(epochs=1, batch_size=8, lr=0.1)
W = {"b": torch.zeros(3), "a": torch.zeros(40_000)}  # names out of order on purpose


def _update(delta_scale, client=0, samples=10):
    params = {k: v + delta_scale for k, v in W.items()}
    return ClientUpdate(client=client, params=params, num_samples=samples, num_steps=1)


def _noise(dp, update, round=1):
    task = ClientTask(round=round, params=W)
    out = dp.finish_client(task, update, LOCAL)
    return flatten_by_name(out.params).double() - flatten_by_name(W).double()


def test_the_client_adds_noise_of_std_z_times_c():
    dp = LocalDP(FedAvg(), noise_multiplier=0.5, clip_norm=2.0, seed=3)
    sent = _noise(dp, _update(0.0))  # a zero delta: what leaves is the noise alone
    n = sent.numel()
    std = float(sent.std())
    # the sample std of n normals is within 4 / sqrt(2n) of sigma with overwhelming odds
    assert abs(std - 1.0) < 4 / np.sqrt(2 * n)
    assert abs(float(sent.mean())) < 4 / np.sqrt(n)


def test_the_client_clips_before_the_noise_and_streams_are_per_client_and_round():
    dp = LocalDP(FedAvg(), noise_multiplier=1e-9, clip_norm=1.0, seed=0)
    big = _noise(dp, _update(1.0))  # norm sqrt(40_003) before clipping
    assert float(big.norm()) == pytest.approx(1.0, rel=1e-5)
    small = _noise(dp, _update(1e-4))  # norm 0.02: kept as it is
    assert float(small.norm()) == pytest.approx(1e-4 * np.sqrt(40_003), rel=1e-5)
    noisy = LocalDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, seed=0)
    a, again = _noise(noisy, _update(0.0, client=1)), _noise(noisy, _update(0.0, client=1))
    other_client = _noise(noisy, _update(0.0, client=2))
    other_round = _noise(noisy, _update(0.0, client=1), round=2)
    assert torch.equal(a, again)
    assert abs(float(torch.corrcoef(torch.stack([a, other_client]))[0, 1])) < 0.05
    assert abs(float(torch.corrcoef(torch.stack([a, other_round]))[0, 1])) < 0.05


def test_the_server_averages_the_noisy_updates_with_equal_weights():
    dp = LocalDP(FedAvg(), noise_multiplier=1e-9, clip_norm=100.0, seed=0)
    state = dp.init(W)
    # sample counts 1 and 1000 must not matter: the mean of +1 and -3 is -1
    updates = [_update(1.0, client=0, samples=1), _update(-3.0, client=1, samples=1000)]
    new = dp.aggregate(state, updates)
    assert torch.allclose(new.params["a"], torch.full((40_000,), -1.0), atol=1e-6)
    assert torch.allclose(new.params["b"], torch.full((3,), -1.0), atol=1e-6)


def test_what_local_dp_cannot_cover_is_refused():
    with pytest.raises(ConfigError, match="does not support scaffold"):
        LocalDP(Scaffold(num_clients=4), noise_multiplier=1.0, clip_norm=1.0, seed=0)
    dp = LocalDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, seed=0)
    with pytest.raises(ConfigError, match="distributed DP"):
        SecureAggregation(dp, SecAggSettings(max_weight=1), seed=0)


def _local_epsilons(z, delta, rounds):
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    out = []
    for _ in range(rounds):
        accountant.compose(dp_accounting.GaussianDpEvent(z / 2))
        out.append(accountant.get_epsilon(delta))
    return out


def test_a_simulation_reports_the_local_guarantee_per_round(digits):
    privacy = {"dp": "local", "clip_norm": 1.0, "noise_multiplier": 2.0}
    result = run(prepare(digits(rounds=3, engine="sequential", privacy=privacy)))
    eps = [m["epsilon"] for m in result.history]
    # no amplification: the same as a client in every round, with no sampling at all
    assert eps == pytest.approx(_local_epsilons(2.0, 1e-5, 3), rel=1e-9)
    fed = prepare(digits(rounds=3, privacy=privacy))
    assert isinstance(fed.strategy, LocalDP)
    assert "local" in fed.privacy.guarantee(3) and "server included" in fed.privacy.guarantee(3)


def test_a_target_calibrates_the_local_noise(digits):
    privacy = {"dp": "local", "clip_norm": 1.0, "target_epsilon": 20.0}
    plan = prepare(digits(rounds=4, privacy=privacy)).privacy
    assert plan.calibrated and 19.5 < plan.epsilon(4) <= 20.0
    assert _local_epsilons(plan.noise_multiplier, 1e-5, 4)[-1] == pytest.approx(
        plan.epsilon(4), rel=1e-6
    )


def test_same_model_on_the_sequential_and_vectorized_engines(digits):
    privacy = {"dp": "local", "clip_norm": 0.5, "noise_multiplier": 0.3}
    seq = run(prepare(digits(rounds=2, engine="sequential", privacy=privacy)))
    vec = run(prepare(digits(rounds=2, engine="vectorized", privacy=privacy)))
    for name, value in seq.state.params.items():
        assert (value - vec.state.params[name]).abs().max().item() <= 1e-4


def test_adaptive_clipping_is_refused_with_local_dp(digits):
    with pytest.raises(Exception, match="adaptive clipping needs the server"):
        digits(privacy={"dp": "local", "adaptive_clipping": True, "noise_multiplier": 1.0})
