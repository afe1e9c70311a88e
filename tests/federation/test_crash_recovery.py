"""SIGKILL the server mid-round and start it again: the round completes with every
accepted update counted exactly once, and the final model is the uninterrupted one."""

import json

import httpx
import pytest
import torch
from conftest import experiment, finish, make_devices, records, round_records, write_config

from fedge.config import parse_config
from fedge.federation.wire import decode_model
from fedge.sim.experiment import prepare, run


def train_without_uploading(device):
    """Train and keep the update pending, as a device whose upload has not gone out."""
    device._upload_pending = lambda identity: None
    try:
        assert device.step()[0] == "trained"
    finally:
        del device._upload_pending
    return device


def upload_but_lose_the_answer(server, device):
    """Send the pending update as the device would, but drop the server's answer."""
    pending = json.loads((device.state_dir / "pending.json").read_text())
    token = json.loads((device.state_dir / "device.json").read_text())["token"]
    response = httpx.post(
        server.url + pending["url"],
        content=(device.state_dir / "pending.safetensors").read_bytes(),
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": pending["key"]},
    )
    assert response.status_code == 201, response.text


def restart(server):
    port = server.port
    server.kill()
    server.start(port=port)


@pytest.mark.parametrize(
    "strategy",
    [{"name": "fedavg"}, {"name": "fedadam", "server_lr": 0.05}, {"name": "scaffold"}],
    ids=["fedavg", "fedadam", "scaffold"],
)
def test_sigkill_mid_round_loses_and_doubles_nothing(federation, tmp_path, strategy):
    """Also for strategies with server state (FedAdam's moments, SCAFFOLD's c) and device
    state (SCAFFOLD's c_i), which must survive the restarts as the model does."""
    data = experiment(name=f"crash-{strategy['name']}", rounds=2, strategy=strategy)
    config = parse_config(data)
    server = federation(data)
    d0, d1, d2 = fleet = make_devices(server, tmp_path, config)

    # Round 1: two updates accepted, the third device still training when the server dies.
    assert d0.step()[0] == "trained" and d1.step()[0] == "trained"
    train_without_uploading(d2)
    assert server.status()["round"]["accepted"] == 2
    restart(server)
    resumed = server.status()["round"]
    assert (resumed["number"], resumed["accepted"], resumed["assigned"]) == (1, 2, 3)
    assert d2.step()[0] == "uploaded"  # the pending update goes to the restarted server

    # Round 2: an upload is stored but its answer is lost in the crash; the device retries.
    train_without_uploading(d0)
    upload_but_lose_the_answer(server, d0)
    restart(server)
    assert server.status()["round"]["accepted"] == 1
    assert d0.step()[0] == "uploaded"  # a retry under the same key: accepted once
    assert d1.step()[0] == "trained" and d2.step()[0] == "trained"
    for device in fleet:
        assert finish(device) == "finished"
    assert [device.accepted for device in fleet] == [2, 2, 2]

    state = records(server.state)
    updates = [eval(row) for row in state["rows"]["updates"]]  # (seq, round, device, ...)
    by_round = {r: sorted(u[2] for u in updates if u[1] == r) for r in (1, 2)}
    assert all(len(set(ids)) == len(ids) == 3 for ids in by_round.values())
    history = server.status()["history"]
    assert [(h["round"], h["status"], h["participants"]) for h in history] == [
        (1, "closed", 3),
        (2, "closed", 3),
    ]
    assert sorted(round_records(server.state)[2]["devices"]) == by_round[2]

    versions = server.state / "tensors" / "versions" / "2"
    _, params, _ = decode_model((versions / "model.safetensors").read_bytes())
    _, _, server_state = decode_model((versions / "server.safetensors").read_bytes())
    uninterrupted = run(prepare(config)).state
    for name, value in uninterrupted.params.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-5)
    assert server_state.keys() == uninterrupted.extras.keys()
    for group, values in uninterrupted.extras.items():
        for name, value in values.items():
            torch.testing.assert_close(server_state[group][name], value, rtol=0, atol=1e-5)
    for device in fleet:
        device.close()


def test_a_finished_federation_trains_on_when_given_more_rounds(federation, tmp_path):
    data = experiment(name="extend", rounds=1)
    server = federation(data)
    fleet = make_devices(server, tmp_path, parse_config(data))
    for device in fleet:
        assert device.step()[0] == "trained"
    assert finish(fleet[0]) == "finished"
    port = server.port
    server.stop()

    data["rounds"] = 2
    write_config(server.config, data)
    server.start(port=port)
    assert server.status()["round"]["number"] == 2
    for device in fleet:
        assert finish(device) == "trained"
    assert finish(fleet[0]) == "finished" and server.status()["model_version"] == 2

    data["model"]["hidden"] = [8]  # another model: not the same federation
    write_config(server.config, data)
    server.stop()
    with pytest.raises(RuntimeError, match="belongs to another experiment"):
        server.start()
