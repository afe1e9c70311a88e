"""What a device takes from the server. Devices of an earlier fedge version: a task leaves
out the extensions it does not use, so such a device still takes ordinary rounds, and a
task that needs an extension it does not know is refused, saying to upgrade, never
half-followed (against a real server). A malformed secure plan is refused with its reason
before training."""

import httpx
import pytest
from conftest import SECRET, experiment, task_fields
from pydantic import ConfigDict, create_model

from fedge.errors import ProtocolError
from fedge.federation.client import parse_plan, parse_task
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
    task = Task.model_validate(task_fields())
    future = {**task.to_wire(), "homomorphic_encryption": {"scheme": "ckks"}}
    with pytest.raises(ProtocolError, match=r"homomorphic_encryption.*upgrade fedge"):
        parse_task(future)
    with pytest.raises(ProtocolError, match=r"malformed task \(round:"):
        parse_task({**task.to_wire(), "round": "one"})


def test_a_malformed_secure_plan_is_refused_before_training():
    """A hostile or broken server's SecAgg+ plan stops the device with the reason (a
    ProtocolError), never a traceback; a well-formed plan is taken."""
    from fedge.privacy.secagg import RoundPlan, RoundSetup, SkellamCodec
    from fedge.privacy.secagg.encoding import Segment, VectorCodec
    from fedge.privacy.secagg.params import GraphParameters

    codec = VectorCodec((Segment("delta", 10, -1.0, 1.0),), 32, 6)
    good = RoundPlan(
        RoundSetup(b"ctx", 2, 32, 10), GraphParameters(6, 4, 2), codec, "uniform", None, None
    ).to_json()
    assert parse_plan(good).graph.degree == 4
    noisy = SkellamCodec(
        segments=(Segment("delta", 10, -1.0, 1.0),),
        bits=32,
        max_clients=6,
        clip_norm=1.0,
        scale=10.0,
        norm_bound=20.0,
        client_variance=4.0,
        min_survivors=2,
    ).to_json()
    cases = {
        "not an object": ("plan", "a JSON object is expected"),
        "no segments": ({k: v for k, v in good.items() if k != "segments"}, "no 'segments'"),
        "bad context": ({**good, "context": "not hex"}, "malformed"),
        "threshold 1": ({**good, "threshold": 1}, "threshold must be >= 2"),
        "65 bits": ({**good, "modulus_bits": 65}, "modulus bits must be in [8, 64]"),
        "empty interval": ({**good, "segments": [["delta", 10, 1.0, 1.0]]}, "is empty"),
        "huge noise": (
            {**good, "distributed_dp": {**noisy, "client_variance": 1e30}},
            "above the largest planned",
        ),
        "negative noise": (
            {**good, "distributed_dp": {**noisy, "client_variance": -1.0}},
            "positive clip norm, scale, bound, variance",
        ),
    }
    for name, (plan, message) in cases.items():
        with pytest.raises(ProtocolError, match="malformed secure aggregation plan") as caught:
            parse_plan(plan)
        assert message in str(caught.value), name
