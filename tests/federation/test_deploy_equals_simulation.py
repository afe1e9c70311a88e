"""Deploy = simulate: a real server and 3 real client processes over loopback end with the
global model of the sequential simulation of the same config."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import SECRET, experiment

from fedge.config import parse_config
from fedge.federation.wire import decode_model
from fedge.sim.experiment import prepare, run


def run_clients(server, config, state_root, count=3):
    env = {**os.environ, "FEDGE_ENROLLMENT_SECRET": SECRET}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedge",
                "client",
                "--server",
                server.url,
                "--config",
                str(config),
                "--partition",
                str(k),
                "--state",
                str(state_root / f"device{k}"),
                "--quiet",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(count)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        outputs.append(out)
        assert proc.returncode == 0, out
    return outputs


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
    run_clients(server, server.config, tmp_path)

    status = server.status()
    assert status["finished"] and status["model_version"] == 3
    closed = [h for h in status["history"] if h["status"] == "closed"]
    assert [h["participants"] for h in closed] == [3, 3, 3]
    assert all(len(set(h["devices"])) == 3 for h in closed)

    simulated = run(prepare(parse_config(data)))
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
