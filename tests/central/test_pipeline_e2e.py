"""The whole centralized pipeline, as a user runs it: upload a dataset, train and register a
model, promote it, serve it from a real `fedge serve` process, run it on the edge app,
send labelled samples back from the device, retrain on the new dataset version, promote
the new model, and check that the edge app picks it up and its predictions come from it."""

import json
import time

import httpx
import numpy as np
import torch
from typer.testing import CliRunner

from fedge.central import LocalStore, ModelRegistry
from fedge.central.datasets import DatasetStore
from fedge.central.weights import load_model, params_from_bytes
from fedge.cli.main import app

runner = CliRunner()

JOB = """\
name = "digits-mlp"
[dataset]
name = "digits"
[model]
preset = "mlp"
hidden = [32]
[train]
epochs = 4
batch_size = 32
lr = 0.1
momentum = 0.9
"""


def cli(*args, env):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def version_probabilities(registry, version, x):
    """Softmax outputs of a registered version, computed with PyTorch from its weights."""
    v = registry.get("digits-mlp", version)
    model = load_model(
        v.model_spec(), params_from_bytes(registry.read_file(v, "model.safetensors"))
    )
    with torch.no_grad():
        return torch.softmax(model(torch.as_tensor(x)), 1).numpy()


def wait_until_served(url, version):
    deadline = time.monotonic() + 15
    while httpx.get(f"{url}/v2/models/digits-mlp").json()["version"] != str(version):
        assert time.monotonic() < deadline, f"the server did not switch to version {version}"
        time.sleep(0.05)


def test_upload_train_promote_edge_update_send_retrain(tmp_path, serve_process):
    store = tmp_path / "store"
    env = {"FEDGE_STORE": str(store), "FEDGE_EDGE_CACHE": str(tmp_path / "edge")}
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    registry = ModelRegistry(LocalStore(store))

    # 1. The cloud: data upload, training job, registration, promotion.
    assert "digits@1" in cli("data", "upload", "digits", "--set", "data.name=digits", env=env)
    out = cli(
        "train", job, "--out", tmp_path / "run1", "--register", "digits-mlp", "--quiet", env=env
    )
    assert "registered digits-mlp version 1 (data digits@1)" in out
    assert registry.get("digits-mlp", 1).metrics["final_test_accuracy"] > 0.85
    cli("models", "promote", "digits-mlp", "1", env=env)
    # The device's credential for sending samples back (writes need a token).
    made = runner.invoke(app, ["tokens", "create", "--model", "digits-mlp"], env=env)
    env["FEDGE_TOKEN"] = made.stdout.strip()

    with serve_process(store, "--poll", 0.2, log=tmp_path / "server.log") as url:
        env["FEDGE_SERVER"] = url
        # 2. The device downloads the frozen model and predicts locally.
        assert "downloaded version 1" in cli("edge", "update", "digits-mlp", env=env)
        test_x = (
            DatasetStore(registry.store).load(DatasetStore(registry.store).get("digits")).x_test
        )
        probe = test_x[:20]
        np.save(tmp_path / "probe.npy", probe)
        # A pattern no training example looks like, which the device will label itself.
        pattern = np.zeros((1, 1, 8, 8), np.float32)
        pattern[0, 0, ::2, :] = 1.0
        np.save(tmp_path / "pattern.npy", pattern)
        first = json.loads(
            cli("edge", "predict", "digits-mlp", tmp_path / "probe.npy", "--probabilities", env=env)
        )
        assert first["version"] == 1
        np.testing.assert_allclose(
            first["probabilities"], version_probabilities(registry, 1, probe), atol=1e-5
        )
        served = httpx.post(f"{url}/predict", json={"instances": probe.tolist()}).json()
        assert served["prediction"] == first["prediction"]
        before = json.loads(cli("edge", "predict", "digits-mlp", tmp_path / "pattern.npy", env=env))
        label = (before["prediction"][0] + 1) % 10  # a label version 1 does not give it

        # 3. The device sends labelled samples back: the next version of the dataset.
        samples = tmp_path / "samples.json"
        samples.write_text(
            json.dumps({"instances": np.repeat(pattern, 200, 0).tolist(), "labels": [label] * 200})
        )
        assert "sent 200 samples: dataset digits version 2" in cli(
            "edge", "send", "digits-mlp", samples, env=env
        )
        newest = DatasetStore(registry.store).get("digits")
        assert (newest.version, newest.parent, newest.appended, newest.source) == (
            2,
            1,
            200,
            "edge:digits-mlp@1",
        )

        # 4. Retraining on the newest version registers version 2, trained on digits@2.
        out = cli(
            "train", job, "--out", tmp_path / "run2", "--register", "digits-mlp", "--quiet", env=env
        )
        assert "registered digits-mlp version 2 (data digits@2)" in out
        # The edge app keeps version 1 until version 2 is promoted.
        assert "version 1 is up to date" in cli("edge", "update", "digits-mlp", env=env)
        cli("models", "promote", "digits-mlp", "2", env=env)
        wait_until_served(url, 2)

        # 5. The device updates over the air; its predictions come from version 2.
        assert "downloaded version 2" in cli("edge", "update", "digits-mlp", env=env)
        after = json.loads(
            cli("edge", "predict", "digits-mlp", tmp_path / "probe.npy", "--probabilities", env=env)
        )
        assert after["version"] == 2
        np.testing.assert_allclose(
            after["probabilities"], version_probabilities(registry, 2, probe), atol=1e-5
        )
        assert not np.allclose(after["probabilities"], first["probabilities"], atol=1e-3)
        learned = json.loads(
            cli("edge", "predict", "digits-mlp", tmp_path / "pattern.npy", env=env)
        )
        assert learned["version"] == 2 and learned["prediction"] == [label]
        served = httpx.post(f"{url}/predict", json={"instances": probe.tolist()}).json()
        assert served["prediction"] == after["prediction"]
