"""`fedge serve` under fire, as a real process over loopback: concurrent sample uploads,
credentials on writes, the OpenAPI document, broken models, slow and vanishing clients."""

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate as validate_openapi
from typer.testing import CliRunner

from fedge.central import LocalStore, ModelRegistry, open_store, publish_model
from fedge.central.datasets import DatasetStore
from fedge.central.serving import ServeSettings, create_app
from fedge.central.storage.base import blob_key
from fedge.central.tokens import TokenStore
from fedge.cli.main import app
from fedge.models.spec import build_model, load_spec, preset_spec
from fedge.tasks.detection import Detection

SPEC = preset_spec("mlp", (1, 8, 8), 10, hidden=(8,))
# A detector (14 channels: 10 class heatmaps + size + offset) on 16×16 images.
DETECTOR = {
    "name": "tiny-detector",
    "input_shape": [1, 16, 16],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "groupnorm", "groups": 2},
        {"type": "relu"},
        {"type": "conv2d", "filters": 14, "kernel_size": 1},
    ],
}
X = np.zeros((1, 64)).tolist()
runner = CliRunner()


def publish(registry, name, seed=0, promote=True):
    v = publish_model(registry, name, SPEC, build_model(SPEC, seed=seed).state_dict())
    if promote:
        registry.promote(name, v.version)
    return v


def post_sample(url, model, tag, headers):
    """One sample whose features are all ``tag / 100``, so its owner can be found later."""
    body = {"instances": [[tag / 100] * 64], "labels": [tag % 10]}
    return httpx.post(f"{url}/v2/models/{model}/samples", json=body, headers=headers, timeout=60)


def check_no_sample_lost(store, answers, writers):
    datasets = DatasetStore(store)
    assert [a.status_code for a in answers] == [201] * writers, [a.text for a in answers]
    versions = datasets.versions("digits")
    assert [v.parent for v in versions[1:]] == [v.version for v in versions[:-1]]
    newest = datasets.load(versions[-1])
    tags = sorted(np.round(newest.x[:, 0, 0, 0] * 100).astype(int).tolist())
    assert tags == list(range(1, writers + 1))
    for tag, answer in enumerate(answers, start=1):
        held = datasets.load(datasets.get("digits", answer.json()["version"])).x[:, 0, 0, 0]
        assert np.isclose(held, tag / 100).sum() == 1, f"the 201 for sample {tag} lied"


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_sample_uploads_keep_every_sample(backend, tmp_path, serve_process, request):
    """Eight devices upload one sample each at the same moment: all eight answers are 201,
    the versions form one chain and the newest holds all eight (a folder and S3)."""
    if backend == "local":
        where = str(tmp_path / "store")
        store = LocalStore(tmp_path / "store")
    else:
        where = f"s3://{request.getfixturevalue('bucket')}/p"
        store = open_store(where)
    publish(ModelRegistry(store), "digits")
    headers = {"Authorization": f"Bearer {TokenStore(store).create(['model:digits'])}"}
    writers = 8
    with serve_process(where, log=tmp_path / "log") as url, ThreadPoolExecutor(writers) as pool:
        answers = list(pool.map(lambda t: post_sample(url, "digits", t, headers), range(1, 9)))
    check_no_sample_lost(store, answers, writers)


# --- credentials ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_process):
    """A server (reads open) over models "digits" and "other", and its store."""
    root = tmp_path_factory.mktemp("auth")
    registry = ModelRegistry(LocalStore(root / "store"))
    publish(registry, "digits")
    publish(registry, "other", seed=1)
    detector = load_spec(DETECTOR)
    v = publish_model(
        registry, "detector", detector, build_model(detector, seed=0).state_dict(),
        task=Detection.from_spec(detector).to_dict(),
    )  # fmt: skip
    registry.promote("detector", v.version)
    log = root / "log"
    args = ["--header-timeout", 1, "--body-timeout", 1, "--max-body-bytes", 1 << 20]
    with serve_process(root / "store", *args, log=log) as url:
        yield url, registry.store, log


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_writes_need_a_token_in_scope_and_a_revoked_one_stops_working(served):
    url, store, _ = served
    tokens = TokenStore(store)
    samples_before = DatasetStore(store).version_numbers("digits")

    missing = post_sample(url, "digits", 1, {})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "needs a token" in missing.json()["error"]
    for wrong in ("nonsense", "fedge_000000000000_" + "A" * 43, tokens.create(["*"])[:-1] + "x"):
        r = post_sample(url, "digits", 1, bearer(wrong))
        assert r.status_code == 401 and "wrong or revoked" in r.json()["error"]
    assert post_sample(url, "digits", 1, {"Authorization": "Basic dXNlcjpwdw=="}).status_code == 401

    other = tokens.create(["model:other"])
    r = post_sample(url, "digits", 1, bearer(other))
    assert r.status_code == 403 and "does not allow write on model 'digits'" in r.json()["error"]
    reader = tokens.create(["model:digits"], access="read")
    assert post_sample(url, "digits", 1, bearer(reader)).status_code == 403
    assert DatasetStore(store).version_numbers("digits") == samples_before  # nothing written

    by_dataset = tokens.create(["dataset:digits"])
    assert post_sample(url, "digits", 1, bearer(by_dataset)).status_code == 201
    token = tokens.create(["model:digits"])
    assert post_sample(url, "digits", 2, bearer(token)).status_code == 201
    token_id = token.split("_")[1]
    result = runner.invoke(app, ["tokens", "revoke", token_id, "--store", str(store.root)])
    assert result.exit_code == 0 and f"revoked token {token_id}" in result.output
    r = post_sample(url, "digits", 3, bearer(token))
    assert r.status_code == 401
    # Reads stay open by default.
    assert httpx.post(f"{url}/predict", json={"model": "digits", "instances": X}).status_code == 200


def test_tokens_are_stored_hashed_and_listed_without_their_secret(tmp_path):
    store = str(tmp_path / "store")
    result = runner.invoke(
        app, ["tokens", "create", "--model", "digits", "--note", "cams", "--store", store]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    secret = token.split("_", 2)[2]
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert secret.encode() not in stored and token.encode() not in stored
    listing = runner.invoke(app, ["tokens", "list", "--store", store])
    assert "model:digits" in listing.output and "cams" in listing.output
    assert secret not in listing.output
    assert TokenStore(LocalStore(tmp_path / "store")).verify(token) is not None
    bad = runner.invoke(app, ["tokens", "create", "--store", store])
    assert bad.exit_code != 0 and "--model NAME" in bad.output
    bad = runner.invoke(app, ["tokens", "create", "--model", "a b", "--store", store])
    assert bad.exit_code != 0 and "invalid token scope" in bad.output


def test_reads_can_be_protected(tmp_path, serve_process):
    store = LocalStore(tmp_path / "store")
    publish(ModelRegistry(store), "digits")
    reader = TokenStore(store).create(["model:digits"], access="read")
    stranger = TokenStore(store).create(["model:other"], access="read")
    body = {"model": "digits", "instances": X}
    with serve_process(store.root, "--auth-reads", log=tmp_path / "log") as url:
        assert httpx.post(f"{url}/predict", json=body).status_code == 401
        assert httpx.get(f"{url}/v2/models/digits/download").status_code == 401
        assert httpx.post(f"{url}/predict", json=body, headers=bearer(stranger)).status_code == 403
        assert httpx.post(f"{url}/predict", json=body, headers=bearer(reader)).status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/openapi.json").status_code == 200


# --- the OpenAPI document -----------------------------------------------------------------


def test_every_route_is_in_a_valid_openapi_document(served, tmp_path):
    url, _, _ = served
    document = httpx.get(f"{url}/openapi.json").json()
    validate_openapi(document)
    documented = {(path, m.upper()) for path, ops in document["paths"].items() for m in ops}
    routes = {
        (route.path, method)
        for route in create_app(ModelRegistry(LocalStore(tmp_path)), ServeSettings()).routes
        for method in getattr(route, "methods", ()) or ()
        if method != "HEAD" and route.path != "/openapi.json"
    }
    assert routes and routes <= documented, routes - documented
    samples = document["paths"]["/v2/models/{name}/samples"]["post"]
    assert samples["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SamplesRequest"
    }
    assert {"401", "403", "201"} <= set(samples["responses"])
    assert "labels" in document["components"]["schemas"]["SamplesRequest"]["properties"]


# --- broken models --------------------------------------------------------------------------


def break_models(registry):
    """One model per way a store can go bad; returns their names."""
    store = registry.store
    # Different seeds: blobs are stored by content, and each model must break alone.
    publish(registry, "alias-garbage", seed=11)
    store.put_bytes("models/alias-garbage/aliases/production.json", b"\x00not json")
    publish(registry, "manifest-bad", seed=12)
    store.put_bytes("models/manifest-bad/versions/1.json", b'{"format": 1, "name": 3}')
    v = publish(registry, "blob-missing", seed=13)
    store.delete(blob_key(v.files["model.onnx"].sha256))
    v = publish(registry, "blob-truncated", seed=14)
    path = store.root / blob_key(v.files["model.onnx"].sha256)
    path.write_bytes(path.read_bytes()[:100])
    return ["alias-garbage", "manifest-bad", "blob-missing", "blob-truncated"]


def test_broken_models_are_reported_and_the_rest_are_served(tmp_path, serve_process):
    registry = ModelRegistry(LocalStore(tmp_path / "store"))
    publish(registry, "good")
    broken = break_models(registry)
    log = tmp_path / "log"
    # Named on the command line too: the server starts anyway.
    with serve_process(tmp_path / "store", "good", *broken, "--poll", 0.2, log=log) as url:
        r = httpx.post(f"{url}/predict", json={"model": "good", "instances": X})
        assert r.status_code == 200
        for name in broken:
            ready = httpx.get(f"{url}/v2/models/{name}/ready")
            assert ready.status_code == 503 and ready.json()["ready"] is False, ready.text
            answer = httpx.post(f"{url}/predict", json={"model": name, "instances": X})
            assert answer.status_code == 503 and "cannot be served" in answer.json()["error"]
            assert str(tmp_path) not in answer.text
            assert name in log.read_text()
        assert "corrupt" in httpx.get(f"{url}/v2/models/alias-garbage/ready").json()["reason"]
        # Repaired in the store: served within a few polls, without a restart.
        registry.promote("alias-garbage", 1)
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v2/models/alias-garbage/ready").status_code != 200:
            assert time.monotonic() < deadline, "the repaired model was never retried"
            time.sleep(0.1)
    assert "Traceback" not in log.read_text()


def test_models_verify_finds_missing_and_truncated_blobs(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "store"))
    publish(registry, "good")
    break_models(registry)
    store = str(tmp_path / "store")
    result = runner.invoke(app, ["models", "verify", "--store", store])
    assert result.exit_code != 0
    out = " ".join(result.output.split())
    assert "good: 1 version ok" in out
    assert "blob-missing v1: model.onnx is missing" in out
    assert "blob-truncated v1: model.onnx is corrupt" in out
    assert "manifest-bad v1: manifest is corrupt" in out
    assert "alias-garbage: alias production is corrupt" in out
    ok = runner.invoke(app, ["models", "verify", "good", "--store", store])
    assert ok.exit_code == 0, ok.output
    listing = runner.invoke(app, ["models", "list", "--store", store])
    assert listing.exit_code == 0
    (warning,) = [line for line in listing.output.splitlines() if "models verify" in line]
    flagged = set(warning.split(":")[0].split(", "))
    assert flagged == {"alias-garbage", "blob-missing", "blob-truncated", "manifest-bad"}


# --- slow and vanishing clients -------------------------------------------------------------


def test_unfinished_headers_are_timed_out(served):
    url, _, log = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 8
    assert "no complete request headers within 1 s" in log.read_text()


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response from ``sock``: headers and body may come in separate
    segments, so read until the body has its ``content-length`` (or the socket closes)."""
    answer = b""
    while True:
        head, sep, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.I)
        if sep and length and len(body) >= int(length.group(1)):
            return answer
        chunk = sock.recv(4096)
        if not chunk:
            return answer
        answer += chunk


def test_a_half_sent_body_gets_408_and_the_server_answers_others_meanwhile(served):
    url, _, _ = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"instances": ['
        )
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 1 s" in answer


def test_clients_that_vanish_cost_one_log_line_each(served):
    url, _, log = served
    host, port = url.removeprefix("http://").split(":")
    before = log.read_text().count("\n")
    clients = 40
    for _ in range(clients):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                + b"[0.5, " * 100
            )
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    time.sleep(0.5)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("\n") - before <= clients, text[-2000:]


# --- hostile requests against every documented route --------------------------------------

ABSURD = ["%00", "..%2F..%2Fetc", "x" * 5000, "%C2%B2", "-1", "9" * 40, "%F0%9F%92%A3", "a%20b"]
NESTED = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BODIES = {
    "garbage": b"\x00\xff\xfe garbage \x80",
    "empty": b"",
    "not JSON": b"{instances: [1,",
    "deeply nested": NESTED,
    # orjson reads the one above; NaN sends this one to the standard library's parser
    "deeply nested with NaN": NESTED.replace(b"{", b'{"x": NaN, ', 1),
    "NaN": b'{"model": "digits", "instances": [[NaN, Infinity, -Infinity]], "labels": [NaN]}',
    "wrong types": json.dumps({"model": [1], "version": {"a": 1}, "instances": "x"}).encode(),
    "detector options": b'{"model": "detector", "instances": [[0]], "max_detections": NaN, '
    b'"score_threshold": [1]}',
    "detector NaN count": b'{"model": "detector", "instances": [[0]], "max_detections": NaN}',
}


def documented(url):
    document = httpx.get(f"{url}/openapi.json").json()
    return [(path, method.upper()) for path, ops in document["paths"].items() for method in ops]


def fill(path, value):
    return path.replace("{name}", value).replace("{version}", value)


def test_hostile_requests_on_every_route_get_a_4xx_json_error(served):
    url, store, _ = served
    writer = bearer(TokenStore(store).create(["*"]))
    routes = documented(url)
    assert len(routes) >= 14
    seen = []
    with httpx.Client(timeout=60) as client:
        for path, method in routes:
            targets = [fill(path, "digits"), fill(path, "detector")]
            targets += [fill(path, bad) for bad in ABSURD if "{" in path]
            for target in targets:
                for name, body in BODIES.items():
                    r = client.request(
                        method,
                        url + target,
                        content=body,
                        headers={"content-type": "application/json", **writer},
                    )
                    seen.append(r.status_code)
                    ok = r.status_code < 300 and method == "GET"  # GETs ignore bodies
                    assert ok or 400 <= r.status_code < 500, (
                        method,
                        target[:80],
                        name,
                        r.text[:300],
                    )
                    assert r.headers["content-type"].startswith(
                        ("application/json", "application/zip", "application/octet-stream")
                    ), r.headers
                    if r.status_code >= 400:
                        assert r.json()["error"], (method, target, name)
    assert 400 in seen and 404 in seen
    assert httpx.post(f"{url}/predict", json={"model": "digits", "instances": X}).status_code == 200


def test_a_64_mib_body_is_refused_without_dropping_the_connection(served):
    url, store, _ = served
    writer = bearer(TokenStore(store).create(["*"]))
    big = b"[" + b"0.5," * (16 << 20) + b"0]"
    for path, method in documented(url):
        if method != "POST":
            continue
        r = httpx.request(
            method, url + fill(path, "digits"), content=big, headers=writer, timeout=120
        )
        assert r.status_code == 413, (path, r.text[:200])
        assert "exceeds" in r.json()["error"]
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
