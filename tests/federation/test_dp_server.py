"""DP-FedAvg on a real server: 3 client processes reach the model of the sequential
simulation, noise included; the ledger has no amplification by sampling (checked against
dp-accounting); with secure aggregation the clients clip and the server noises the sum."""

import dp_accounting
import pytest
from conftest import experiment, round_records, start_clients, wait_for_clients
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
