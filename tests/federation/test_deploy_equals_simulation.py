"""Deploy = simulate: a real server and 3 real client processes over loopback end with the
global model of the sequential simulation of the same config."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import (
    experiment,
    finish,
    make_devices,
    round_records,
    start_clients,
    wait_for_clients,
)

from fedge.config import parse_config
from fedge.federation.wire import decode_model
from fedge.fl.local import client_generator, train_client
from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run


def wait_for_evaluations(server, count, timeout=60):
    """The server's status once ``count`` rounds have their server-side evaluation."""
    deadline = time.monotonic() + timeout
    while True:
        status = server.status()
        evaluated = [h for h in status["history"] if h.get("test_accuracy") is not None]
        if len(evaluated) >= count or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def final_model(state, version):
    path = state / "tensors" / "versions" / str(version) / "model.safetensors"
    found, params, extras = decode_model(path.read_bytes())
    assert found == version
    return params, extras


@pytest.mark.parametrize(
    "strategy", [{"name": "fedavg"}, {"name": "scaffold"}], ids=["fedavg", "scaffold"]
)
def test_deployment_reaches_the_simulated_model(federation, tmp_path, strategy):
    data = experiment(name=f"deploy-{strategy['name']}", rounds=3, strategy=strategy)
    server = federation(data)
    # Device 2 trains on its own file (--data), the others on a named partition.
    fed = prepare(parse_config(data))
    x, y = fed.clients.client(2)
    own = tmp_path / "device2.npz"
    np.savez(own, x=x.numpy(), y=y.numpy())
    wait_for_clients(start_clients(server, tmp_path, files={2: own}))

    status = wait_for_evaluations(server, 3)
    assert status["finished"] and status["model_version"] == 3
    closed = [h for h in status["history"] if h["status"] == "closed"]
    assert [h["participants"] for h in closed] == [3, 3, 3]
    committed = round_records(server.state)
    assert all(len(set(committed[h["round"]]["devices"])) == 3 for h in closed)

    simulated = run(prepare(parse_config(data)))
    # The server tested every new model on the test split, as the simulation did.
    for served, sim in zip(closed, simulated.history, strict=True):
        assert served["test_accuracy"] == pytest.approx(sim["test_accuracy"], abs=1e-6)
    params, extras = final_model(server.state, 3)
    assert params.keys() == simulated.state.params.keys()
    for name, value in simulated.state.params.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-5)
    # The model moved: the comparison is not between two untouched initial models.
    initial, _ = final_model(server.state, 0)
    assert max(float((params[k] - initial[k]).abs().max()) for k in params) > 1e-2
    if strategy["name"] == "scaffold":
        # The server's control variate c (sent with the model) matches the simulation's.
        for name, value in simulated.state.extras["c"].items():
            torch.testing.assert_close(extras["c"][name], value, rtol=0, atol=1e-5)
        assert max(float(v.abs().max()) for v in extras["c"].values()) > 0


def test_a_device_that_loses_its_scaffold_state_restarts_from_zero(federation, tmp_path):
    """SCAFFOLD's c_i lives on the device; one that loses it trains on with c_i = 0 and
    the federation stays consistent: the same model as local SGD with that loss."""
    data = experiment(name="lost-state", rounds=3, strategy={"name": "scaffold"})
    config = parse_config(data)
    server = federation(data)
    fleet = make_devices(server, tmp_path, config)
    for r in (1, 2, 3):
        if r == 2:
            (fleet[1].state_dir / "client_state.safetensors").unlink()
        for device in fleet:
            assert finish(device) == "trained"
    assert finish(fleet[0]) == "finished"

    # Reference: the round loop written out, with device 1's c_i dropped before round 2.
    fed = prepare(config)
    strategy = fed.strategy
    model = build_model(fed.spec, seed=config.seed)
    state = strategy.init(dict(model.named_parameters()))
    own = {}
    for r in (1, 2, 3):
        task = strategy.client_task(state)
        if r == 2:
            own.pop(1)
        updates = []
        for k in range(3):
            x, y = fed.clients.client(k)
            update = train_client(
                model,
                strategy,
                replace(task, client_state=own.get(k)),
                x,
                y,
                fed.local,
                client_generator(config.seed, r, k),
                client_index=k,
            )
            own[k] = update.client_state
            updates.append(update)
        state = strategy.aggregate(state, updates)
    params, extras = final_model(server.state, 3)
    for name, value in state.params.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-5)
        torch.testing.assert_close(extras["c"][name], state.extras["c"][name], rtol=0, atol=1e-5)
    # Not the run without the loss.
    unbroken = run(prepare(config)).state.params
    assert max(float((unbroken[k] - params[k]).abs().max()) for k in params) > 1e-4
    for device in fleet:
        device.close()
