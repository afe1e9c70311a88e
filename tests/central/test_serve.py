"""`fedge serve`, started as a real server process and exercised over loopback HTTP:
KServe v2 and /predict against PyTorch, micro-batching, hot swap on promotion, downloads
with ETags, sample uploads, and a 4xx JSON error for every kind of bad input."""

import asyncio
import hashlib
import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedge.central import LocalStore, ModelRegistry, open_store, publish_model
from fedge.central.datasets import DatasetArrays, DatasetStore
from fedge.central.serving import MicroBatcher
from fedge.central.tokens import TokenStore
from fedge.cli.main import app
from fedge.models.spec import build_model, preset_spec

SPEC = preset_spec("mlp", (1, 8, 8), 10, hidden=(16,))
MAX_ROWS = 16
MAX_BODY = 200_000


def torch_logits(seed, x):
    with torch.no_grad():
        return build_model(SPEC, seed=seed)(torch.as_tensor(x, dtype=torch.float32)).numpy()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Model "digits" (versions 1 and 2, production → 1) and "swap" (the same two
    versions, production → 1, moved by the hot-swap test)."""
    registry = ModelRegistry(LocalStore(tmp_path_factory.mktemp("serve") / "store"))
    for seed in (0, 1):
        v = publish_model(registry, "digits", SPEC, build_model(SPEC, seed=seed).state_dict())
        files = {name: registry.read_file(v, name) for name in v.files}
        registry.register("swap", files)
    registry.promote("digits", 1)
    registry.promote("swap", 1)
    return registry


@pytest.fixture(scope="module")
def auth(registry):
    """Headers with a write token for every model and dataset."""
    return {"Authorization": f"Bearer {TokenStore(registry.store).create(['*'])}"}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    """The stderr of the module's server."""
    return tmp_path_factory.mktemp("serve-log") / "server.log"


@pytest.fixture(scope="module")
def url(registry, server_log, serve_process):
    args = ["--poll", 0.2, "--max-delay-ms", 20, "--max-request-rows", MAX_ROWS]
    args += ["--max-body-bytes", MAX_BODY]
    with serve_process(registry.store.root, *args, log=server_log) as url:
        yield url


def test_health_and_metadata(url):
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/digits").json()
    assert meta["versions"] == ["1", "2"]
    assert meta["version"] == "1"
    assert meta["aliases"]["production"] == 1
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities", "label"]
    assert httpx.get(f"{url}/v2/models/digits/versions/2").json()["version"] == "2"
    assert httpx.get(f"{url}/v2/models/digits/versions/production").json()["version"] == "1"
    assert httpx.get(f"{url}/v2/models/digits/ready").json()["ready"] is True


def test_v2_infer_and_predict_agree_with_torch(url):
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    expected = torch_logits(0, x)
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "input", "shape": [5, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}
        ],
    }
    r = httpx.post(f"{url}/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("digits", "1", "req-1")
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["logits"]["shape"] == [5, 10] and out["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(out["logits"]["data"], (5, 10)), expected, atol=1e-4)
    assert out["label"]["data"] == expected.argmax(1).tolist()
    probs = torch.softmax(torch.as_tensor(expected), 1).numpy()
    np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (5, 10)), probs, atol=1e-5)

    # Only the outputs asked for; nested data is read too; a version by number.
    body["outputs"] = [{"name": "label"}]
    body["inputs"][0]["data"] = x.tolist()
    r = httpx.post(f"{url}/v2/models/digits/versions/2/infer", json=body)
    assert r.json()["model_version"] == "2"
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert r.json()["outputs"][0]["data"] == torch_logits(1, x).argmax(1).tolist()

    r = httpx.post(f"{url}/predict", json={"model": "digits", "instances": x.tolist()})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model"], answer["version"]) == ("digits", 1)
    assert answer["prediction"] == expected.argmax(1).tolist()
    np.testing.assert_allclose(answer["probabilities"], probs, atol=1e-5)
    # Flat examples, the model in the query string.
    flat = {"instances": x.reshape(5, -1).tolist()}
    r = httpx.post(f"{url}/predict?model=digits", json=flat)
    assert r.json()["prediction"] == expected.argmax(1).tolist()


def test_concurrent_requests_are_micro_batched(url):
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1 + i % 3, 1, 8, 8)).astype(np.float32) for i in range(32)]
    before = httpx.get(f"{url}/v2/models/digits/stats").json()["versions"]["1"]

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/predict", json={"model": "digits", "instances": x.tolist()})
                    for x in xs
                )
            )

    responses = asyncio.run(fire())
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["prediction"] == torch_logits(0, x).argmax(1).tolist()
    assert max(int(r.headers["x-batch-rows"]) for r in responses) > 3
    after = httpx.get(f"{url}/v2/models/digits/stats").json()["versions"]["1"]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 32
    assert batches < requests
    assert after["max_batch_rows"] <= 64


def test_promoted_version_is_served_without_restart(url, registry):
    x = np.random.default_rng(2).normal(size=(3, 1, 8, 8)).astype(np.float32)
    body = {"model": "swap", "instances": x.tolist()}
    assert httpx.post(f"{url}/predict", json=body).json()["version"] == 1

    async def clients():
        """Eight clients asking without pause until each has seen version 2."""
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one():
                seen = []
                deadline = time.monotonic() + 10
                while not seen or seen[-1]["version"] != 2:
                    assert time.monotonic() < deadline, "the server kept serving version 1"
                    r = await client.post("/predict", json=body)
                    assert r.status_code == 200, r.text
                    seen.append(r.json())
                return seen

            return await asyncio.gather(*(one() for _ in range(8)))

    async def promote_meanwhile():
        task = asyncio.ensure_future(clients())
        await asyncio.sleep(0.1)
        await asyncio.to_thread(registry.promote, "swap", 2)
        return await task

    for seen in asyncio.run(promote_meanwhile()):
        versions = [answer["version"] for answer in seen]
        assert versions == sorted(versions)  # never back to the old version
        np.testing.assert_allclose(
            seen[-1]["probabilities"],
            torch.softmax(torch.as_tensor(torch_logits(1, x)), 1),
            atol=1e-5,
        )
    assert httpx.get(f"{url}/v2/models/swap").json()["version"] == "2"


def test_download_has_version_etag_and_answers_304(url, registry):
    r = httpx.get(f"{url}/v2/models/digits/download")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    sha = registry.get("digits", 1).files["model.onnx"].sha256
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["x-model-version"] == "1"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["model.json", "model.onnx", "version.json"]
        assert hashlib.sha256(zf.read("model.onnx")).hexdigest() == sha
        assert json.loads(zf.read("version.json"))["version"] == 1
    # The same version always gives the same bytes.
    assert httpx.get(f"{url}/v2/models/digits/download").content == r.content

    not_modified = httpx.get(
        f"{url}/v2/models/digits/download", headers={"If-None-Match": r.headers["etag"]}
    )
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == r.headers["etag"]
    stale = httpx.get(f"{url}/v2/models/digits/download", headers={"If-None-Match": '"abc"'})
    assert stale.status_code == 200

    raw = httpx.get(f"{url}/v2/models/digits/versions/2/download?format=onnx")
    assert raw.headers["x-model-version"] == "2"
    assert hashlib.sha256(raw.content).hexdigest() == raw.headers["etag"].strip('"')


def test_samples_are_appended_as_dataset_versions(url, registry, auth):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)
    y = [0, 3, 9, 3]
    body = {"instances": x.tolist(), "labels": y}
    first = httpx.post(f"{url}/v2/models/digits/samples", json=body, headers=auth)
    assert first.status_code == 201, first.text
    second = httpx.post(f"{url}/v2/models/digits/samples", json=body, headers=auth).json()
    # "digits" records no training data version: its samples go to a dataset "digits".
    assert first.json() | {"sha256": None} == {
        "dataset": "digits",
        "version": 1,
        "ref": "digits@1",
        "samples": 4,
        "total": 4,
        "sha256": None,
    }
    assert (second["version"], second["total"]) == (2, 8)
    datasets = DatasetStore(registry.store)
    version = datasets.get("digits", 2)
    assert (version.parent, version.appended, version.source) == (1, 4, "edge:digits@1")
    arrays = datasets.load(version)
    np.testing.assert_array_equal(arrays.x, np.concatenate([x, x]))
    np.testing.assert_array_equal(arrays.y, y + y)
    assert arrays.num_classes == 10


def test_samples_go_to_the_dataset_the_model_was_trained_on(url, registry, auth):
    v = registry.get("digits", 1)
    files = {name: registry.read_file(v, name) for name in v.files}
    registry.register("trained", files, data_version="mnist8@1")
    registry.promote("trained", 1)
    x = np.ones((2, 64), dtype=np.float32)
    r = httpx.post(
        f"{url}/v2/models/trained/samples",
        json={"instances": x.tolist(), "labels": [1, 2]},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    assert r.json()["ref"] == "mnist8@1"
    # A dataset whose examples have another shape refuses them, naming why.
    datasets = DatasetStore(registry.store)
    datasets.upload("other", DatasetArrays(np.zeros((3, 5), np.float32), np.zeros(3, np.int64), 10))
    registry.register("wrong", files, data_version="other@1")
    registry.promote("wrong", 1)
    r = httpx.post(
        f"{url}/v2/models/wrong/samples",
        json={"instances": x.tolist(), "labels": [1, 2]},
        headers=auth,
    )
    assert r.status_code == 409
    assert "cannot take these samples" in r.json()["error"]


X = np.zeros((1, 1, 8, 8)).tolist()


def v2(**tensor):
    base = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": X}
    return {"inputs": [{**base, **tensor}]}


BAD = {
    "not JSON": ("/predict", b"{instances: [", 400, "not JSON"),
    "nested too deeply": (
        "/predict",
        b'{"model": "digits", "instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        400,
        ("nests too deeply", "ragged"),  # which depends on the JSON parser's depth limit
    ),
    "not an object": ("/predict", b"[1, 2]", 400, "JSON object"),
    "no instances": ("/predict", {"model": "digits"}, 400, '"instances"'),
    "empty": ("/predict", {"model": "digits", "instances": []}, 400, "empty"),
    "wrong shape": ("/predict", {"model": "digits", "instances": [[1, 2, 3]]}, 400, "shape"),
    "ragged": ("/predict", {"model": "digits", "instances": [[1, 2], [3]]}, 400, "ragged"),
    "strings": ("/predict", {"model": "digits", "instances": [["1"] * 64]}, 400, "only numbers"),
    "booleans": (
        "/predict",
        {"model": "digits", "instances": [[True] + [1.0] * 63]},
        400,
        "only numbers",
    ),
    "nulls": ("/predict", {"model": "digits", "instances": [[None] * 64]}, 400, "only numbers"),
    "NaN": (
        "/predict",
        b'{"model": "digits", "instances": [[NaN' + b", 0" * 63 + b"]]}",
        400,
        "NaN",
    ),
    "Infinity": (
        "/predict",
        b'{"model": "digits", "instances": [[-Infinity' + b", 0" * 63 + b"]]}",
        400,
        "NaN or infinity",
    ),
    "beyond float32": ("/predict", {"model": "digits", "instances": [[1e39] * 64]}, 400, "float32"),
    "too many rows": (
        "/predict",
        {"model": "digits", "instances": [[0] * 64] * (MAX_ROWS + 1)},
        413,
        "limit",
    ),
    "body too large": (
        "/predict",
        {"model": "digits", "instances": [[0.5] * 64] * 4000},
        413,
        "exceeds",
    ),
    "unknown model": (
        "/predict",
        {"model": "nope", "instances": X},
        404,
        "unknown model 'nope' (available: digits, swap",
    ),
    "unknown version": (
        "/predict",
        {"model": "digits", "version": 9, "instances": X},
        404,
        "no version 9",
    ),
    "unnamed model": ("/predict", {"instances": X}, 400, "name the model"),
    "v2 unknown model": (
        "/v2/models/nope/infer",
        v2(),
        404,
        "unknown model 'nope' (available: digits, swap",
    ),
    "v2 bad model name": (
        "/v2/models/no%20pe/infer",
        v2(),
        404,
        "unknown model 'no pe' (available: digits, swap",
    ),
    "v2 unknown version": ("/v2/models/digits/versions/7/infer", v2(), 404, "no version 7"),
    "v2 bad version": ("/v2/models/digits/versions/x!/infer", v2(), 404, "unknown version"),
    "v2 no inputs": ("/v2/models/digits/infer", {"outputs": []}, 400, '"inputs"'),
    "v2 input name": ("/v2/models/digits/infer", v2(name="x"), 400, "unknown input"),
    "v2 datatype": ("/v2/models/digits/infer", v2(datatype="BYTES"), 400, "datatype"),
    "v2 datatype list": ("/v2/models/digits/infer", v2(datatype=["FP32"]), 400, "datatype"),
    "v2 datatype object": ("/v2/models/digits/infer", v2(datatype={"a": 1}), 400, "datatype"),
    "v2 shape": ("/v2/models/digits/infer", v2(shape=[1, 64]), 400, "does not fit"),
    "v2 bad shape": ("/v2/models/digits/infer", v2(shape="1x64"), 400, '"shape"'),
    "v2 data count": ("/v2/models/digits/infer", v2(shape=[2, 1, 8, 8]), 400, "values"),
    "v2 int data": (
        "/v2/models/digits/infer",
        v2(datatype="INT32", data=[[0.5] * 64]),
        400,
        "integers",
    ),
    "v2 too many rows": (
        "/v2/models/digits/infer",
        v2(shape=[MAX_ROWS + 1, 1, 8, 8]),
        413,
        "limit",
    ),
    "v2 output": (
        "/v2/models/digits/infer",
        {**v2(), "outputs": [{"name": "x"}]},
        400,
        "unknown output",
    ),
    "labels missing": ("/v2/models/digits/samples", {"instances": X}, 400, '"labels"'),
    "labels range": ("/v2/models/digits/samples", {"instances": X, "labels": [10]}, 400, "[0, 10)"),
    "labels count": (
        "/v2/models/digits/samples",
        {"instances": X, "labels": [1, 2]},
        400,
        "one per instance",
    ),
    "labels float": (
        "/v2/models/digits/samples",
        {"instances": X, "labels": [1.5]},
        400,
        "integers",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(url, case, auth):
    path, body, status, message = BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **auth}
    r = httpx.post(f"{url}{path}", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    alternatives = message if isinstance(message, tuple) else (message,)
    assert any(m in r.json()["error"] for m in alternatives), r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/predict", 405),
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/bad%20name/download", 404),
        ("GET", "/v2/models/digits/download?format=tar", 400),
        # Unicode digits pass str.isdigit: "²" (int() refuses it), "١" (int() reads 1)
        ("GET", "/v2/models/digits/versions/%C2%B2", 404),
        ("GET", "/v2/models/digits/versions/%D9%A1", 404),
        pytest.param("GET", "/v2/models/digits/versions/" + "9" * 5000, 404, id="5000-digits"),
        ("GET", "/nothing/here", 404),
    ],
)
def test_bad_paths_and_methods_get_json_errors(url, method, path, status):
    r = httpx.request(method, f"{url}{path}")
    assert r.status_code == status
    assert r.json()["error"]


def test_the_server_still_answers_after_bad_input(url):
    httpx.post(f"{url}/predict", content=b"\xff\xfe garbage")
    r = httpx.post(f"{url}/predict", json={"model": "digits", "instances": X})
    assert r.status_code == 200


def test_serve_help_and_unknown_model_at_startup(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--max-batch-rows" in result.output
    result = runner.invoke(app, ["serve", "nope", "--store", str(tmp_path / "s"), "--port", "0"])
    assert result.exit_code != 0
    assert "unknown model 'nope'" in result.output


def test_the_server_says_what_it_serves_and_logs_every_swap(url, registry, server_log):
    assert (
        "fedge serve: ready, serving digits version 1, swap version 1 (alias production)\n"
        in server_log.read_text()
    )
    for number in (1, 2):  # "watched": versions 1 and 2 of digits, loaded on first use
        v = registry.get("digits", number)
        registry.register("watched", {name: registry.read_file(v, name) for name in v.files})
    registry.promote("watched", 1)
    assert httpx.get(f"{url}/v2/models/watched").json()["version"] == "1"
    registry.promote("watched", 2)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v2/models/watched").json()["version"] != "2":
        assert time.monotonic() < deadline, "the server kept serving version 1"
        time.sleep(0.05)
    log = server_log.read_text()
    assert "fedge serve: serving watched version 1 (production)\n" in log
    assert "fedge serve: watched: production moved from version 1 to 2\n" in log


@pytest.mark.parametrize("registered", [False, True], ids=["empty store", "no alias"])
def test_a_server_with_nothing_to_serve_warns(tmp_path, serve_process, registered):
    registry = ModelRegistry(LocalStore(tmp_path / "store"))
    if registered:
        publish_model(registry, "digits", SPEC, build_model(SPEC, seed=0).state_dict())
    log = tmp_path / "log"
    with serve_process(tmp_path / "store", log=log) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        answer = httpx.post(f"{url}/predict", json={"model": "x", "instances": X})
    assert answer.status_code == 404
    expected = "digits" if registered else "none"
    assert f"unknown model 'x' (available: {expected})" in answer.json()["error"]
    warning = "no model has the alias 'production'" if registered else "holds no models"
    (line,) = [x for x in log.read_text().splitlines() if "warning" in x]
    assert line.startswith("fedge serve: warning: ") and warning in line, line


def test_a_chunked_body_over_the_limit_is_refused(url):
    def chunks():
        yield b'{"model": "digits", "instances": ['
        for _ in range(MAX_BODY // 1000 + 1):
            yield b"[" + b"0.5," * 249 + b"0.5],"
        yield b"[0]]}"

    r = httpx.post(f"{url}/predict", content=chunks())
    assert r.status_code == 413
    assert "exceeds the limit" in r.json()["error"]


def run_batcher(sizes, *, max_rows, max_delay=0.05, close_after=False):
    """Submit batches of ``sizes`` rows at once; returns their results and the batcher."""

    async def go():
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(
                lambda x: x * 2, executor, max_rows=max_rows, max_delay=max_delay
            )
            xs = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate(sizes)]
            futures = [asyncio.ensure_future(batcher.submit(x)) for x in xs]
            if close_after:
                await asyncio.sleep(0)
                batcher.close()
                await batcher.wait_closed()
            results = await asyncio.gather(*futures)
            return xs, results, batcher

    return asyncio.run(go())


def test_batcher_splits_outputs_and_respects_the_row_limit():
    xs, results, batcher = run_batcher([3, 1, 4, 2, 9, 1], max_rows=8)
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.output, x * 2)
    # A request never splits: 3+1+4 fill one batch, 2 waits for the next, 9 runs alone.
    assert [r.batch_rows for r in results] == [8, 8, 8, 2, 9, 1]
    assert (batcher.stats.requests, batcher.stats.rows, batcher.stats.batches) == (6, 20, 4)
    assert batcher.stats.max_batch_rows == 9


def test_a_closed_batcher_answers_what_it_holds_and_takes_no_more():
    xs, results, batcher = run_batcher([2, 2, 2], max_rows=64, close_after=True)
    assert [r.batch_rows for r in results] == [6, 6, 6]
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(batcher.submit(xs[0]))


def test_serving_from_s3(bucket, tmp_path, serve_process):
    """The same server over a bucket on a real S3 API: predict, then a promotion."""
    registry = ModelRegistry(open_store(f"s3://{bucket}/reg"))
    for seed in (0, 1):
        publish_model(registry, "digits", SPEC, build_model(SPEC, seed=seed).state_dict())
    registry.promote("digits", 1)
    x = np.random.default_rng(4).normal(size=(2, 64)).astype(np.float32)
    body = {"instances": x.tolist()}
    with serve_process(f"s3://{bucket}/reg", "--poll", 0.2, log=tmp_path / "log") as url:
        answer = httpx.post(f"{url}/predict", json=body).json()
        assert answer["version"] == 1
        assert answer["prediction"] == torch_logits(0, x.reshape(2, 1, 8, 8)).argmax(1).tolist()
        registry.promote("digits", 2)
        deadline = time.monotonic() + 10
        while httpx.post(f"{url}/predict", json=body).json()["version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
