"""DP-FedAvg on a real server: 3 client processes reach the model of the sequential
simulation, noise included; the ledger has no amplification by sampling (checked against
dp-accounting); with secure aggregation the clients clip and the server noises the sum;
with local DP each device noises its own update from its own entropy."""

import dp_accounting
import pytest
from conftest import experiment, round_records, start_clients, task_fields, wait_for_clients
from dp_accounting import rdp

from fedge.config import parse_config
from fedge.federation.wire import decode_model
from fedge.sim.experiment import prepare, run

PRIVACY = {"clip_norm": 0.5, "noise_multiplier": 1.0}


def _epsilons(z, delta, rounds):
    """ε after each round for one Gaussian mechanism (sensitivity 2C) per round."""
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    out = []
    for _ in range(rounds):
        accountant.compose(dp_accounting.GaussianDpEvent(z / 2))
        out.append(accountant.get_epsilon(delta))
    return out


def _model(state, version):
    path = state / "tensors" / "versions" / str(version) / "model.safetensors"
    return decode_model(path.read_bytes())[1]


def test_central_dp_on_the_server_is_the_simulated_dp_fedavg(federation, tmp_path):
    data = experiment(name="dp-server", rounds=2)
    data["privacy"] = PRIVACY
    server = federation(data)
    wait_for_clients(start_clients(server, tmp_path))
    ended = round_records(server.state)
    assert [ended[r]["status"] for r in (1, 2)] == ["closed", "closed"]
    assert [ended[r]["epsilon"] for r in (1, 2)] == pytest.approx(_epsilons(1.0, 1e-5, 2), rel=1e-9)
    status = server.status()
    assert "whichever devices took part" in status["privacy"]

    simulated = run(prepare(parse_config(data)))
    got = _model(server.state, 2)
    for name, value in simulated.state.params.items():
        assert (got[name] - value).abs().max().item() < 1e-5, name


def test_secure_aggregation_with_central_dp_on_the_server(federation, tmp_path):
    data = experiment(name="dp-secagg", rounds=1, over_selection=1.0)
    data["privacy"] = {**PRIVACY, "secure_aggregation": {"stage_seconds": 10.0}}
    server = federation(data)
    wait_for_clients(start_clients(server, tmp_path))
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    assert ended[1]["secure_aggregation"]["summed"] == 3
    # the same round simulated: clients clip, the server adds the same noise to the sum
    simulated = run(prepare(parse_config({**data, "rounds": 1})))
    got = _model(server.state, 1)
    for name, value in simulated.state.params.items():
        assert (got[name] - value).abs().max().item() < 1e-5, name


def test_local_dp_on_the_server_each_device_noises_its_own_update(federation, tmp_path):
    """dp = "local": 3 devices clip their deltas to C and add N(0, (z·C)²) before
    uploading; the server averages them with equal weights. m·(w1 − w0) minus the clean sum
    of the clipped deltas (recomputed here) is noise of variance m·(z·C)² per value, and it
    is not the simulation's seeded noise (which a server could regenerate); the round's ε
    is one Gaussian mechanism's (dp-accounting)."""
    import numpy as np
    import torch
    from test_secure_aggregation import assert_sum_holds_the_planned_noise

    from fedge.fl.types import flatten_by_name
    from fedge.privacy.local import client_noise_generator

    clip, z, devices = 0.5, 1.0, 3
    data = experiment(name="dp-local", rounds=1)
    data["privacy"] = {"dp": "local", "clip_norm": clip, "noise_multiplier": z}
    server = federation(data)
    # devices whose owners demand noise added on the device: local DP has it
    wait_for_clients(start_clients(server, tmp_path, "--require", "noise", count=devices))
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    assert ended[1]["epsilon"] == pytest.approx(_epsilons(z, 1e-5, 1)[0], rel=1e-9)
    variance = devices * (z * clip) ** 2
    noise = assert_sum_holds_the_planned_noise(server.state, data, clip, variance)
    d = noise.size
    for key in [*range(devices), *ended[1]["devices"]]:  # indices, then the device ids
        seeded = torch.randn(d, generator=client_noise_generator(0, 1, key), dtype=torch.float64)
        assert abs(np.corrcoef(noise, seeded.numpy())[0, 1]) < 0.2, key
    start = flatten_by_name(_model(server.state, 0))
    assert (flatten_by_name(_model(server.state, 1)) - start).abs().max() > 0.1 * z * clip


def test_a_device_refuses_a_round_without_the_protection_its_owner_requires(federation, tmp_path):
    """Central DP: the server sees each update and adds the noise itself. A device started
    with --require noise trains nothing, sends nothing, and says why (each kind of round
    against each requirement: the test below; the browser's: test_browser_secure_rounds)."""
    server = federation({**experiment(name="dp-require", rounds=1), "privacy": PRIVACY})
    (device,) = start_clients(server, tmp_path, "--require", "noise", count=1)
    out, _ = device.communicate(timeout=120)
    assert device.returncode == 5, out
    assert "which this device requires (--require noise)" in out and "sends nothing" in out
    assert "has no noise added on the device" in " ".join(out.split())
    current = server.status()["round"]
    assert current["assigned"] == 1 and current["accepted"] == 0


def test_a_device_refuses_a_round_that_adds_less_noise_than_it_requires(federation, tmp_path):
    """--min-noise 2 against a local-DP round that adds noise of z = 1 on the device."""
    local = experiment(name="dp-min-noise", rounds=1)
    local["privacy"] = {"dp": "local", "clip_norm": 0.5, "noise_multiplier": 1.0}
    server = federation(local)
    (device,) = start_clients(server, tmp_path, "--min-noise", "2", count=1)
    out, _ = device.communicate(timeout=120)
    assert device.returncode == 5, out
    said = " ".join(out.split())
    assert "noise of at least 2 times" in said and "it would add 1" in said
    assert "(--min-noise 2)" in said
    assert server.status()["round"]["accepted"] == 0


def test_unmet_requirements_of_each_kind_of_round():
    from fedge.federation.client import unmet_requirements
    from fedge.federation.protocol import LocalDPSettings, Task

    local = LocalDPSettings(clip_norm=1.0, noise_multiplier=1.0)
    rounds = {
        "plain": Task(**task_fields()),
        "secure": Task(**task_fields(secure_aggregation={"context": "00"}, secagg_url="/s")),
        "distributed": Task(
            **task_fields(
                secure_aggregation={"distributed_dp": {"client_variance": 4.0, "norm_bound": 2.0}},
                secagg_url="/s",
            )
        ),
        "local": Task(**task_fields(local_dp=local)),
    }
    both = ("secure-aggregation", "noise")
    met = {name: not unmet_requirements(task, both) for name, task in rounds.items()}
    assert met == {"plain": False, "secure": False, "distributed": True, "local": False}
    noise = {name: not unmet_requirements(task, ("noise",)) for name, task in rounds.items()}
    assert noise == {"plain": False, "secure": False, "distributed": True, "local": True}
    secure = {
        name: not unmet_requirements(task, ("secure-aggregation",)) for name, task in rounds.items()
    }
    assert secure == {"plain": False, "secure": True, "distributed": True, "local": False}
    assert all(not unmet_requirements(task, ()) for task in rounds.values())
    assert len(unmet_requirements(rounds["plain"], both)) == 2


def test_own_noise_and_a_minimum_of_it():
    """The noise a device adds itself, relative to its sensitivity: z under local DP, √μᵢ/B
    under distributed DP (hand-picked numbers), 0 otherwise; --min-noise compares with it."""
    from fedge.federation.client import own_noise, unmet_requirements
    from fedge.federation.protocol import LocalDPSettings, Task

    local = Task(**task_fields(local_dp=LocalDPSettings(clip_norm=0.5, noise_multiplier=1.5)))
    dp = {"client_variance": 36.0, "norm_bound": 4.0}  # √36 / 4 = 1.5
    distributed = Task(**task_fields(secure_aggregation={"distributed_dp": dp}, secagg_url="/s"))
    plain = Task(**task_fields())
    assert (own_noise(local), own_noise(distributed), own_noise(plain)) == (1.5, 1.5, 0.0)
    for task in (local, distributed):
        assert unmet_requirements(task, (), min_noise=1.5) == []
        (missing,) = unmet_requirements(task, (), min_noise=1.6)
        assert "at least 1.6 times" in missing and "it would add 1.5" in missing
    assert unmet_requirements(plain, (), min_noise=0.0) == []
    assert len(unmet_requirements(plain, ("noise",), min_noise=0.1)) == 2
