"""Models and updates as safetensors files: round trips and malformed input."""

import json
import struct

import pytest
import torch

from fedge.errors import UpdateRejected
from fedge.federation.wire import decode_model, decode_update, encode_model, encode_update
from fedge.fl.types import ClientUpdate


def test_model_round_trip_keeps_params_and_task_extras():
    params = {"dense0.weight": torch.randn(3, 4), "dense0.bias": torch.randn(3)}
    extras = {"c": {"dense0.weight": torch.randn(3, 4), "dense0.bias": torch.zeros(3)}}
    version, got, got_extras = decode_model(encode_model(params, extras, model_version=7))
    assert version == 7
    assert all(torch.equal(got[k], v) for k, v in params.items())
    assert all(torch.equal(got_extras["c"][k], v) for k, v in extras["c"].items())


def test_update_round_trip():
    update = ClientUpdate(
        client=3,
        params={"w": torch.arange(4.0)},
        num_samples=17,
        num_steps=5,
        metrics={"train_loss": 0.25, "examples": 85},
        extras={"delta_c": {"w": torch.ones(4)}},
    )
    decoded = decode_update(encode_update(update, round=9, model_version=6), device="dev1")
    assert (decoded.round, decoded.model_version) == (9, 6)
    u = decoded.update
    assert (u.client, u.num_samples, u.num_steps) == ("dev1", 17, 5)
    assert u.metrics == {"train_loss": 0.25, "examples": 85}
    assert torch.equal(u.params["w"], torch.arange(4.0))
    assert torch.equal(u.extras["delta_c"]["w"], torch.ones(4))


def with_metadata(**meta):
    header = json.dumps({"__metadata__": {"format": "fedge.update.v1", **meta}}).encode()
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not a safetensors"),
        (struct.pack("<Q", 999) + b"{}", "does not fit"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (
            with_metadata(round="1", model_version="0", num_samples="\u00b2", num_steps="1"),
            "num_samples",
        ),
        (
            with_metadata(round="1", model_version="0", num_samples="-1", num_steps="1"),
            "num_samples",
        ),
        (
            with_metadata(round="1", model_version="0", num_samples="9" * 40, num_steps="1"),
            "num_samples",
        ),
        (with_metadata(round="0", model_version="0", num_samples="1", num_steps="1"), "round"),
        (
            with_metadata(
                round="1", model_version="0", num_samples="1", num_steps="1", metrics="[1, 2]"
            ),
            "metrics",
        ),
        (encode_model({"w": torch.zeros(1)}, {}, model_version=0), "format"),
    ],
    # Named, not derived from the bytes: safetensors orders a header's metadata as it likes.
    ids=[
        "empty",
        "header overruns",
        "header a list",
        "unicode digit count",
        "negative count",
        "absurd count",
        "round 0",
        "metrics a list",
        "a model, not an update",
    ],
)
def test_malformed_updates_are_rejected_with_a_reason(body, message):
    with pytest.raises(UpdateRejected, match=message):
        decode_update(body, device="d")


def test_tensor_names_must_say_what_they_are():
    from safetensors.torch import save

    body = save(
        {"weights": torch.zeros(1)},
        metadata={
            "format": "fedge.update.v1",
            "round": "1",
            "model_version": "0",
            "num_samples": "1",
            "num_steps": "1",
        },
    )
    with pytest.raises(UpdateRejected, match="neither params"):
        decode_update(body, device="d")
