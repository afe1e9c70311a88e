"""`fedge edge` against a real `fedge serve` process: over-the-air download with ETags,
local onnxruntime inference without torch, updates on promotion, samples sent back."""

import json
import subprocess
import sys
import textwrap
import time

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedge.central import LocalStore, ModelRegistry, publish_model
from fedge.central.datasets import DatasetStore
from fedge.central.edge import EdgeApp, load_inputs, load_samples
from fedge.central.tokens import TokenStore
from fedge.cli.main import app
from fedge.errors import DataError, ServingError
from fedge.models.spec import build_model, preset_spec

SPEC = preset_spec("mlp", (1, 8, 8), 10, hidden=(16,))
runner = CliRunner()


def torch_probabilities(seed, x):
    with torch.no_grad():
        logits = build_model(SPEC, seed=seed)(torch.as_tensor(x, dtype=torch.float32))
    return torch.softmax(logits, 1).numpy()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Model "digits" with versions 1 (seed 0) and 2 (seed 1); production → 1."""
    registry = ModelRegistry(LocalStore(tmp_path_factory.mktemp("edge") / "store"))
    for seed in (0, 1):
        publish_model(registry, "digits", SPEC, build_model(SPEC, seed=seed).state_dict())
    registry.promote("digits", 1)
    return registry


@pytest.fixture(scope="module")
def token(registry):
    """A write token for model "digits"."""
    return TokenStore(registry.store).create(["model:digits"])


@pytest.fixture(scope="module")
def url(registry, tmp_path_factory, serve_process):
    log = tmp_path_factory.mktemp("edge-log") / "server.log"
    with serve_process(registry.store.root, "--poll", 0.2, log=log) as url:
        yield url


@pytest.fixture
def production(registry, url):
    """Set production to a version and wait until the server serves it."""

    def move(version):
        registry.promote("digits", version)
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v2/models/digits").json()["version"] != str(version):
            assert time.monotonic() < deadline, "the server did not pick up the promotion"
            time.sleep(0.05)

    move(1)
    yield move
    move(1)


@pytest.fixture
def examples(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return x, path


def test_download_predict_locally_and_update_on_promotion(url, production, tmp_path, examples):
    x, _ = examples
    edge = EdgeApp("digits", url, tmp_path / "cache")
    assert edge.cached() is None
    first = edge.update()
    assert first.changed and first.model.version == 1
    prediction = edge.predict(x)
    assert prediction.version == 1
    np.testing.assert_allclose(prediction.probabilities, torch_probabilities(0, x), atol=1e-5)
    assert prediction.labels.tolist() == torch_probabilities(0, x).argmax(1).tolist()
    # Flat examples work too; nothing new on the server means no download.
    assert edge.predict(x.reshape(6, 64)).labels.tolist() == prediction.labels.tolist()
    assert not edge.update().changed

    production(2)
    second = edge.update()
    assert second.changed and second.model.version == 2
    after = edge.predict(x)
    assert after.version == 2
    np.testing.assert_allclose(after.probabilities, torch_probabilities(1, x), atol=1e-5)
    assert not np.allclose(after.probabilities, prediction.probabilities, atol=1e-3)
    # Only the version in use stays on the device.
    kept = sorted(p.name for p in (tmp_path / "cache" / "digits").iterdir() if p.is_dir())
    assert kept == [second.model.folder.name]


def test_cli_update_predict_send(url, production, tmp_path, examples, registry, token):
    x, path = examples
    env = {"FEDGE_SERVER": url, "FEDGE_EDGE_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["edge", "update", "digits"], env=env)
    assert result.exit_code == 0, result.output
    assert "downloaded version 1" in result.output
    result = runner.invoke(app, ["edge", "update", "digits"], env=env)
    assert "version 1 is up to date" in result.output

    result = runner.invoke(app, ["edge", "predict", "digits", str(path)], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["version"] == 1
    assert answer["prediction"] == torch_probabilities(0, x).argmax(1).tolist()

    production(2)
    result = runner.invoke(app, ["edge", "predict", "digits", str(path), "--update"], env=env)
    assert json.loads(result.output)["version"] == 2

    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"instances": x[:3].tolist(), "labels": [1, 2, 3]}))
    result = runner.invoke(app, ["edge", "send", "digits", str(samples)], env=env)
    assert result.exit_code != 0 and "401: writing needs a token" in result.output
    result = runner.invoke(
        app, ["edge", "send", "digits", str(samples)], env={**env, "FEDGE_TOKEN": token}
    )
    assert result.exit_code == 0, result.output
    assert "sent 3 samples: dataset digits version" in result.output
    newest = DatasetStore(registry.store).get("digits")
    assert newest.appended in (None, 3) and newest.source == "edge:digits@2"
    np.testing.assert_array_equal(DatasetStore(registry.store).load(newest).x[-3:], x[:3])


@pytest.mark.parametrize("command", [[], ["update"], ["predict"], ["send"]])
def test_every_edge_command_has_help(command):
    result = runner.invoke(app, ["edge", *command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_send_stores_a_dataset_version(url, tmp_path, token):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(5, 64)).astype(np.float32), np.array([0, 1, 2, 3, 4])
    path = tmp_path / "s.npz"
    np.savez(path, x=x, y=y)
    loaded = load_samples(path)
    answer = EdgeApp("digits", url, tmp_path / "cache", token=token).send(*loaded)
    assert answer["samples"] == 5 and answer["dataset"] == "digits"


# Run in a fresh interpreter where importing torch fails, as on a device without torch:
# the packages load their API lazily, so the edge app and its CLI must still work.
_NO_TORCH = """
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is not installed on this device ({name})")
        return None

sys.meta_path.insert(0, NoTorch())

import fedge.cli.main  # the whole CLI imports without torch
from fedge.central.edge import EdgeApp, load_inputs

edge = EdgeApp("digits", URL, CACHE)
update = edge.update()
prediction = edge.predict(load_inputs(INPUTS))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps({"version": update.model.version, "labels": prediction.labels.tolist(),
                  "probabilities": prediction.probabilities.tolist(), "torch": loaded}))
"""


def test_edge_app_runs_without_torch(url, production, tmp_path, examples):
    x, path = examples
    header = f"URL, CACHE, INPUTS = {url!r}, {str(tmp_path)!r}, {str(path)!r}\n"
    result = subprocess.run(
        [sys.executable, "-c", header + textwrap.dedent(_NO_TORCH)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["torch"] == []
    assert answer["version"] == 1
    np.testing.assert_allclose(answer["probabilities"], torch_probabilities(0, x), atol=1e-5)


def test_edge_errors_name_the_problem(url, tmp_path, examples, token):
    x, _ = examples
    edge = EdgeApp("digits", url, tmp_path / "cache", token=token)
    with pytest.raises(ServingError, match="run `fedge edge update digits` first"):
        edge.predict(x)
    with pytest.raises(ServingError, match="404: unknown model 'nope'"):
        EdgeApp("nope", url, tmp_path / "cache").update()
    with pytest.raises(ServingError, match="cannot reach the server"):
        EdgeApp("digits", "http://127.0.0.1:1", tmp_path / "cache").update()
    edge.update()
    with pytest.raises(DataError, match=r"shape \[n, 1, 8, 8\]"):
        edge.predict(np.zeros((2, 3)))
    with pytest.raises(DataError, match="NaN"):
        edge.predict(np.full((1, 64), np.nan))
    with pytest.raises(ServingError, match=r"400: labels must lie in \[0, 10\)"):
        edge.send(x[:1], np.array([12]))
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(DataError, match="holds no examples"):
        load_inputs(bad)
    result = runner.invoke(
        app, ["edge", "predict", "digits", str(tmp_path / "missing.npy"), "--cache", str(tmp_path)]
    )
    assert result.exit_code == DataError.exit_code
    assert "file not found" in result.output


# --- tampering --------------------------------------------------------------------------

# A man in the middle: forwards GET /<mode>/<path> to the server at argv[1] and, in a
# download's zip, rewrites model.json (mode "json": an input shape of the same size that
# onnxruntime refuses), truncates model.onnx and rewrites the ETag to match ("onnx"), and
# rewrites version.json's hashes to match what it changed ("manifest").
_PROXY = """
import hashlib, http.server, io, json, sys, urllib.error, urllib.request, zipfile

UPSTREAM = sys.argv[1]
FORWARDED = ("content-type", "etag", "x-model-name", "x-model-version")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def tamper(mode, body, headers):
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    if "json" in mode:
        spec = json.loads(files["model.json"])
        spec["input_shape"] = [2, 4, 8]
        files["model.json"] = json.dumps(spec).encode()
    if "onnx" in mode:
        files["model.onnx"] = files["model.onnx"][: len(files["model.onnx"]) // 2]
        headers["etag"] = '"' + sha256(files["model.onnx"]) + '"'
    if "manifest" in mode:
        meta = json.loads(files["version.json"])
        meta["files"] = {name: sha256(files[name]) for name in ("model.onnx", "model.json")}
        files["version.json"] = json.dumps(meta).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


class Proxy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        _, mode, rest = self.path.split("/", 2)
        sent = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        request = urllib.request.Request(f"{UPSTREAM}/{rest}", headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, headers, body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        headers = {k.lower(): v for k, v in headers.items() if k.lower() in FORWARDED}
        if status == 200 and rest.endswith("/download"):
            body = tamper(mode, body, headers)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
print(server.server_port, flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def proxy(url):
    """URL of a tampering proxy process in front of the server; append /<mode>."""
    proc = subprocess.Popen([sys.executable, "-c", _PROXY, url], stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.mark.parametrize("mode", ["json", "json+manifest", "onnx+manifest"])
def test_a_tampered_download_is_refused_and_the_working_version_kept(
    url, proxy, production, tmp_path, examples, mode
):
    x, _ = examples
    cache = tmp_path / "cache"
    assert EdgeApp("digits", url, cache).update().model.version == 1
    production(2)
    with pytest.raises(ServingError, match=r"download of 'digits' version 2 was refused: .*"
                       r"version 1 stays in use"):  # fmt: skip
        EdgeApp("digits", f"{proxy}/{mode}", cache).update()
    edge = EdgeApp("digits", url, cache)
    kept = edge.predict(x)
    assert kept.version == 1
    np.testing.assert_allclose(kept.probabilities, torch_probabilities(0, x), atol=1e-5)
    # The honest server's version 2 is still news to the device.
    honest = edge.update()
    assert honest.changed and honest.model.version == 2
    np.testing.assert_allclose(edge.predict(x).probabilities, torch_probabilities(1, x), atol=1e-5)


def test_cli_refuses_a_tampered_model_json_and_keeps_predicting(
    url, proxy, production, tmp_path, examples
):
    _, path = examples
    env = {"FEDGE_EDGE_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["edge", "update", "digits", "--server", url], env=env)
    assert "downloaded version 1" in result.output
    production(2)
    result = runner.invoke(app, ["edge", "update", "digits", "--server", f"{proxy}/json"], env=env)
    assert result.exit_code == ServingError.exit_code, result.output
    assert "model.json does not match its SHA-256 in version.json" in result.output
    result = runner.invoke(app, ["edge", "predict", "digits", str(path), "--server", url], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["version"] == 1
    result = runner.invoke(app, ["edge", "update", "digits", "--server", url], env=env)
    assert "downloaded version 2" in result.output


@pytest.mark.parametrize("target", ["model.onnx", "model.json"])
def test_a_cached_file_changed_on_disk_is_refused_and_downloaded_again(
    url, production, tmp_path, examples, target
):
    x, path = examples
    cache = tmp_path / "cache"
    edge = EdgeApp("digits", url, cache)
    folder = edge.update().model.folder
    edge.predict(x)
    if target == "model.onnx":  # another working model: used unchecked, it would answer
        download = f"{url}/v2/models/digits/versions/2/download"
        tampered = httpx.get(download, params={"format": "onnx"}).content
    else:
        spec = json.loads((folder / "model.json").read_text())
        tampered = json.dumps(spec | {"input_shape": [2, 4, 8]}).encode()
    (folder / target).write_bytes(tampered)
    corrupt = rf"{target} does not match its SHA-256.*run `fedge edge update digits`"
    with pytest.raises(ServingError, match=corrupt):
        edge.predict(x)  # the app that loaded it before notices too
    env = {"FEDGE_EDGE_CACHE": str(cache)}
    result = runner.invoke(app, ["edge", "predict", "digits", str(path), "--server", url], env=env)
    assert result.exit_code == ServingError.exit_code, result.output
    result = runner.invoke(app, ["edge", "update", "digits", "--server", url], env=env)
    assert result.exit_code == 0, result.output
    assert "downloaded version 1" in result.output and "changed on this device" in result.output
    healed = EdgeApp("digits", url, cache).predict(x)
    np.testing.assert_allclose(healed.probabilities, torch_probabilities(0, x), atol=1e-5)
