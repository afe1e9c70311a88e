"""SIGKILL at any moment: real client processes train while the server is killed and
restarted at random times; the run ends with the uninterrupted model."""

import random
import time

import torch
from conftest import experiment, records, start_clients, wait_for_clients

from fedge.config import parse_config
from fedge.federation.wire import decode_model
from fedge.sim.experiment import prepare, run


def test_random_sigkills_change_nothing(federation, tmp_path):
    data = experiment(name="chaos", rounds=5)
    server = federation(data)
    clients = start_clients(server, tmp_path, "--max-backoff", "0.3")
    rng = random.Random(7)
    kills = 0
    try:
        deadline = time.monotonic() + 240
        while kills < 4 and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 2.5))
            if all(c.poll() is not None for c in clients):
                break
            port = server.port
            server.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            server.start(port=port)
    finally:
        wait_for_clients(clients)
    assert kills >= 2  # the run was really interrupted

    status = server.status()
    assert status["finished"] and status["model_version"] == 5
    closed = [h for h in status["history"] if h["status"] == "closed"]
    assert len(closed) == 5
    updates = [eval(row) for row in records(server.state)["rows"]["updates"]]
    for h in closed:
        devices = [u[2] for u in updates if u[1] == h["round"]]
        assert len(devices) == len(set(devices)) == 3
    _, params, _ = decode_model(
        (server.state / "tensors" / "versions" / "5" / "model.safetensors").read_bytes()
    )
    for name, value in run(prepare(parse_config(data))).state.params.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-5)
