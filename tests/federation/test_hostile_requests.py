"""Every kind of bad request gets its 4xx and a JSON error naming the problem, and the
server's state folder does not change; then a good upload still goes through once."""

import hashlib
import json
import math
import socket
import struct
import time

import httpx
import pytest
import torch
from conftest import SECRET, ServerProcess, experiment, records, write_config
from safetensors.torch import save as st_save

from fedge.federation.wire import decode_model, encode_update
from fedge.fl.types import ClientUpdate


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    data = experiment(name="hostile", rounds=2, strategy={"name": "scaffold"}, max_samples=5000)
    proc = ServerProcess(write_config(root / "c.toml", data), root / "state", root / "log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def device(server):
    """An enrolled device holding a task of round 1, and the model it got."""
    enrolled = httpx.post(f"{server.url}/v1/devices", json={"secret": SECRET})
    assert enrolled.status_code == 201, enrolled.text
    token = enrolled.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    task = httpx.post(f"{server.url}/v1/checkin", headers=auth).json()
    assert task["status"] == "train" and task["round"] == 1
    model = httpx.get(server.url + task["model_url"], headers=auth)
    _, params, extras = decode_model(model.content)
    return {"auth": auth, "task": task, "params": params, "c": extras["c"], "id": enrolled.json()}


def update_bytes(device, *, params=None, delta_c=None, num_samples=100, metrics=None, **meta):
    update = ClientUpdate(
        client=0,
        params={k: v + 0.01 for k, v in device["params"].items()} if params is None else params,
        num_samples=num_samples,
        num_steps=3,
        metrics={"train_loss": 0.5} if metrics is None else metrics,
        extras={
            "delta_c": delta_c
            if delta_c is not None
            else {k: torch.zeros_like(v) for k, v in device["c"].items()}
        },
    )
    round_ = meta.get("round", device["task"]["round"])
    version = meta.get("model_version", device["task"]["model_version"])
    return encode_update(update, round=round_, model_version=version)


def with_nan(tensors):
    name = next(iter(tensors))
    bad = dict(tensors)
    bad[name] = tensors[name].clone()
    bad[name].view(-1)[0] = math.nan
    return bad


def raw_safetensors(header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def post_update(server, device, body, *, key="k1", round_=None, headers=None):
    url = f"{server.url}/v1/rounds/{round_ or device['task']['round']}/updates"
    h = {**device["auth"], "Idempotency-Key": key, **(headers or {})}
    if key is None:
        del h["Idempotency-Key"]
    return httpx.post(url, content=body, headers=h, timeout=30)


def declared_too_large(server, device):
    """A request that announces 10 GB and sends nothing (httpx will not send that)."""
    head = (
        f"POST /v1/rounds/1/updates HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {device['auth']['Authorization']}\r\nIdempotency-Key: big\r\n"
        f"Content-Length: {10**10}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return httpx.Response(int(status_line.split()[1]), content=body)


def bad_requests(server, device):
    """(name, response, expected status) for each hostile request."""
    url, auth = server.url, device["auth"]
    first = next(iter(device["params"]))
    wrong_shape = dict(device["params"], **{first: torch.zeros(3, 3)})
    wrong_dtype = {k: v.double() for k, v in device["params"].items()}
    c_nan = with_nan(device["c"])
    huge = 1 << 20

    def chunked(size):
        yield from (b"x" * 65536 for _ in range(size // 65536 + 1))

    yield (
        "enroll: wrong secret",
        httpx.post(f"{url}/v1/devices", json={"secret": "wrong-secret"}),
        401,
    )
    yield "enroll: not JSON", httpx.post(f"{url}/v1/devices", content=b"{nope"), 400
    yield "enroll: secret is a list", httpx.post(f"{url}/v1/devices", json={"secret": [1]}), 400
    yield (
        "enroll: unknown kind",
        httpx.post(f"{url}/v1/devices", json={"secret": SECRET, "kind": "toaster"}),
        400,
    )
    yield (
        "enroll: 1 MiB of JSON",
        httpx.post(
            f"{url}/v1/devices", content=b" " * huge, headers={"content-type": "application/json"}
        ),
        413,
    )
    yield "checkin: no token", httpx.post(f"{url}/v1/checkin"), 401
    yield (
        "checkin: wrong token",
        httpx.post(f"{url}/v1/checkin", headers={"Authorization": auth["Authorization"] + "x"}),
        401,
    )
    yield (
        "checkin: unknown device",
        httpx.post(f"{url}/v1/checkin", headers={"Authorization": "Bearer dffff.abc"}),
        401,
    )
    yield "model: unknown version", httpx.get(f"{url}/v1/models/7", headers=auth), 404
    yield "model: unicode digit", httpx.get(f"{url}/v1/models/\u00b2", headers=auth), 400
    yield "model: no token", httpx.get(f"{url}/v1/models/0"), 401
    yield (
        "upload: no token",
        httpx.post(
            f"{url}/v1/rounds/1/updates",
            content=update_bytes(device),
            headers={"Idempotency-Key": "a"},
        ),
        401,
    )
    yield (
        "upload: no idempotency key",
        post_update(server, device, update_bytes(device), key=None),
        400,
    )
    yield (
        "upload: bad idempotency key",
        post_update(server, device, update_bytes(device), key="../x"),
        400,
    )
    yield (
        "upload: round not a number",
        post_update(server, device, update_bytes(device), round_="1e3"),
        400,
    )
    yield "upload: not safetensors", post_update(server, device, b"hello world, not tensors"), 400
    yield "upload: empty body", post_update(server, device, b""), 400
    yield (
        "upload: header longer than body",
        post_update(server, device, struct.pack("<Q", 10**12) + b"{}"),
        400,
    )
    yield (
        "upload: header not JSON",
        post_update(server, device, struct.pack("<Q", 4) + b"\xff\xfe{["),
        400,
    )
    yield (
        "upload: no format metadata",
        post_update(server, device, st_save({"params/x": torch.zeros(1)})),
        400,
    )
    yield (
        "upload: offsets past the data",
        post_update(
            server,
            device,
            raw_safetensors(
                {
                    "__metadata__": {
                        "format": "fedge.update.v1",
                        "round": "1",
                        "model_version": "0",
                        "num_samples": "1",
                        "num_steps": "1",
                    },
                    "params/x": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]},
                }
            ),
        ),
        400,
    )
    yield (
        "upload: NaN in weights",
        post_update(server, device, update_bytes(device, params=with_nan(device["params"]))),
        400,
    )
    yield (
        "upload: NaN in extra tensor",
        post_update(server, device, update_bytes(device, delta_c=c_nan)),
        400,
    )
    yield (
        "upload: absurd sample count",
        post_update(server, device, update_bytes(device, num_samples=10**12)),
        400,
    )
    yield (
        "upload: zero samples",
        post_update(server, device, update_bytes(device, num_samples=0)),
        400,
    )
    yield (
        "upload: NaN metric",
        post_update(server, device, update_bytes(device, metrics={"train_loss": math.nan})),
        400,
    )
    yield (
        "upload: wrong shape",
        post_update(server, device, update_bytes(device, params=wrong_shape)),
        400,
    )
    yield (
        "upload: wrong dtype",
        post_update(server, device, update_bytes(device, params=wrong_dtype)),
        400,
    )
    yield (
        "upload: missing extras",
        post_update(
            server,
            device,
            encode_update(
                ClientUpdate(client=0, params=device["params"], num_samples=5, num_steps=1),
                round=1,
                model_version=0,
            ),
        ),
        400,
    )
    yield (
        "upload: stray tensor",
        post_update(
            server,
            device,
            update_bytes(device, params={**device["params"], "evil": torch.zeros(1)}),
        ),
        400,
    )
    yield (
        "upload: stale round",
        post_update(server, device, update_bytes(device, round=2), round_=2),
        409,
    )
    yield (
        "upload: round in body differs",
        post_update(server, device, update_bytes(device, round=2)),
        409,
    )
    yield (
        "upload: wrong model version",
        post_update(server, device, update_bytes(device, model_version=5)),
        409,
    )
    yield "upload: declared too large", declared_too_large(server, device), 413
    yield "upload: streamed too large", post_update(server, device, chunked(64 << 20)), 413


def test_every_bad_request_is_refused_and_changes_nothing(server, device):
    before = records(server.state)
    seen = []
    for name, response, expected in bad_requests(server, device):
        seen.append(name)
        assert response.status_code == expected, (name, response.status_code, response.text)
        body = response.json()
        assert isinstance(body["error"], str) and body["error"], name
        assert records(server.state) == before, f"{name} changed the server state"
    assert len(seen) >= 30
    status = server.status()
    assert status["round"]["accepted"] == 0 and status["round"]["rejected"] > 0
    assert any("NaN" in r["reason"] for r in status["rejections"])


def test_a_good_upload_is_stored_once(server, device):
    before = records(server.state)
    first = post_update(server, device, update_bytes(device), key="good-1")
    assert first.status_code == 201, first.text
    assert first.json() == {
        "accepted": True,
        "duplicate": False,
        "round": 1,
        "device_id": device["id"]["device_id"],
    }
    after = records(server.state)
    assert len(after["rows"]["updates"]) == len(before["rows"]["updates"]) + 1
    again = post_update(server, device, update_bytes(device), key="good-1")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = post_update(server, device, update_bytes(device), key="good-2")
    assert other.status_code == 409, other.text
    assert records(server.state) == after


def test_model_download_has_an_etag_and_answers_304(server, device):
    url = server.url + device["task"]["model_url"]
    first = httpx.get(url, headers=device["auth"])
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.strip('"') == hashlib.sha256(first.content).hexdigest()
    again = httpx.get(url, headers={**device["auth"], "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = httpx.get(url, headers={**device["auth"], "If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content


def test_every_route_is_in_the_openapi_document(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = document["paths"]
    expected = {
        ("/v1/devices", "post"),
        ("/v1/checkin", "post"),
        ("/v1/models/{version}", "get"),
        ("/v1/rounds/{round}/updates", "post"),
        ("/v1/rounds/{round}/secagg", "get"),
        ("/v1/rounds/{round}/secagg/{stage}", "post"),
        ("/v1/status", "get"),
        ("/v1/events", "get"),
        ("/v1/health", "get"),
        ("/", "get"),
        ("/client", "get"),
        ("/client/{name}", "get"),
    }
    listed = {(path, method) for path, methods in paths.items() for method in methods}
    assert listed == expected
    upload = paths["/v1/rounds/{round}/updates"]["post"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert {"400", "401", "409", "413"} <= set(upload["responses"])
    assert "Task" in document["components"]["schemas"]


def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path, monkeypatch):
    """Slowloris: headers sent a piece at a time and never finished are cut off after
    $FEDGE_HEADER_TIMEOUT seconds, and the server keeps answering others."""
    monkeypatch.setenv("FEDGE_HEADER_TIMEOUT", "1")
    data = experiment(name="slow", rounds=1)
    proc = ServerProcess(
        write_config(tmp_path / "c.toml", data), tmp_path / "state", tmp_path / "log"
    )
    proc.start()
    try:
        host, port = proc.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\nAuthoriz")
            started = time.monotonic()
            assert httpx.get(f"{proc.url}/v1/health").status_code == 200
            assert sock.recv(100) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - started < 8
    finally:
        proc.stop()
    assert "no complete request headers within 1 s" in (tmp_path / "log").read_text()
