"""Devices of an earlier fedge version: a task leaves out the extensions it does not use,
so such a device still takes ordinary rounds, and a task that needs an extension it does
not know is refused, saying to upgrade, never half-followed. Against a real server."""

import httpx
import pytest
from conftest import SECRET, experiment
from pydantic import ConfigDict, create_model

from fedge.errors import ProtocolError
from fedge.federation.client import parse_task
from fedge.federation.protocol import LocalDPSettings, Task

EXTENSIONS = {"secure_aggregation", "secagg_url", "local_dp"}

# A Task as the first protocol version defined it: no extensions, unknown fields refused.
FirstTask = create_model(
    "FirstTask",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (field.annotation, field)
        for name, field in Task.model_fields.items()
        if name not in EXTENSIONS
    },
)


def _checkin(url):
    enrolled = httpx.post(f"{url}/v1/devices", json={"secret": SECRET, "kind": "python"})
    auth = {"Authorization": f"Bearer {enrolled.json()['token']}"}
    return httpx.post(f"{url}/v1/checkin", headers=auth, timeout=30).json()


def test_an_ordinary_task_leaves_the_extensions_out_and_an_old_device_takes_it(federation):
    server = federation(experiment(name="versions-plain", rounds=1))
    body = _checkin(server.url)
    assert body["status"] == "train" and not EXTENSIONS & set(body)
    FirstTask.model_validate(body)  # an earlier device parses it
    assert parse_task(body).local_dp is None


def test_a_local_dp_task_is_refused_by_an_old_device_and_taken_by_this_one(federation):
    data = experiment(name="versions-local", rounds=1)
    data["privacy"] = {"dp": "local", "clip_norm": 0.5, "noise_multiplier": 1.0}
    server = federation(data)
    body = _checkin(server.url)
    assert body["local_dp"] == {"clip_norm": 0.5, "noise_multiplier": 1.0}
    assert parse_task(body).local_dp == LocalDPSettings(clip_norm=0.5, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="local_dp"):
        FirstTask.model_validate(body)  # an earlier device refuses instead of skipping it


def test_a_task_with_a_field_this_device_does_not_know_says_to_upgrade():
    task = Task.model_validate(
        {
            "round": 1,
            "model_version": 0,
            "training_round": 1,
            "model_url": "/v1/models/0",
            "upload_url": "/v1/rounds/1/updates",
            "deadline_seconds": None,
            "seed": 0,
            "num_devices": 3,
            "training": {
                "epochs": 1,
                "batch_size": 8,
                "lr": 0.1,
                "momentum": 0.0,
                "weight_decay": 0.0,
                "drop_last": False,
            },
            "strategy": {"name": "fedavg"},
            "spec": {},
        }
    )
    future = {**task.to_wire(), "homomorphic_encryption": {"scheme": "ckks"}}
    with pytest.raises(ProtocolError, match=r"homomorphic_encryption.*upgrade fedge"):
        parse_task(future)
    with pytest.raises(ProtocolError, match=r"malformed task \(round:"):
        parse_task({**task.to_wire(), "round": "one"})
