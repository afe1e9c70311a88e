"""The browser client (``web/``, served at ``/client``) in real headless Chromium: the same
model from the same spec as PyTorch, the same local SGD and strategy client halves, the
same safetensors files, and browser devices in one federation with Python devices."""

import base64
import json
import shutil
import struct
import zlib
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import torch
from conftest import (
    SECRET,
    ServerProcess,
    experiment,
    finish,
    make_devices,
    round_records,
    start_clients,
    wait_for_clients,
    write_config,
)
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedge.config import parse_config
from fedge.federation.wire import decode_model, decode_update, encode_model, encode_update
from fedge.fl.local import LocalTraining, client_generator, get_params, train_client
from fedge.fl.strategy import FedAvg, FedProx, Scaffold
from fedge.fl.types import ClientTask, ClientUpdate
from fedge.models.spec import build_model, load_spec

ROOT = Path(__file__).resolve().parents[2]
TFJS = ROOT / "web" / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.fesm.min.js"
WASM = ROOT / "web" / "node_modules" / "@tensorflow" / "tfjs-backend-wasm" / "dist"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

# Every layer type of the spec, odd sizes (H ≠ W, C > 1 before a flatten) so that a wrong
# layout or flatten order cannot pass by symmetry.
SPECS = {
    "logreg": {
        "input_shape": [3, 5, 4],
        "layers": [{"type": "flatten"}, {"type": "dense", "units": 7}],
    },
    "mlp": {
        "input_shape": [20],
        "layers": [
            {"type": "dense", "units": 16},
            {"type": "relu"},
            {"type": "dense", "units": 12},
            {"type": "tanh"},
            {"type": "dense", "units": 5},
        ],
    },
    "cnn": {
        "input_shape": [3, 14, 12],
        "layers": [
            {"type": "conv2d", "filters": 5, "kernel_size": 3, "padding": "same"},
            {"type": "relu"},
            {"type": "maxpool2d", "pool_size": 2},
            {"type": "conv2d", "filters": 6, "kernel_size": 3, "stride": 2},
            {"type": "tanh"},
            {"type": "maxpool2d", "pool_size": 2, "stride": 1},
            {"type": "flatten"},
            {"type": "dense", "units": 8, "bias": False},
            {"type": "sigmoid"},
            {"type": "dense", "units": 4},
        ],
    },
}

# A LeNet-like CNN for the digits (1×8×8): conv, pool, conv, flatten of 8 channels.
DIGITS_CNN = {
    "name": "digits-cnn",
    "input_shape": [1, 8, 8],
    "layers": [
        {"type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 8, "kernel_size": 3},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 24},
        {"type": "relu"},
        {"type": "dense", "units": 10},
    ],
}

# Runs `body` in the page with the client's modules imported; `args` are the script's
# arguments; `b64`/`to64` move bytes across the WebDriver boundary.
PRELUDE = """
const done = arguments[arguments.length - 1];
const args = Array.from(arguments).slice(0, -1);
(async () => {
  const tf = await import("/client/tf.fesm.min.js");
  const st = await import("/client/safetensors.js");
  const { SpecModel } = await import("/client/spec.js");
  const train = await import("/client/train.js");
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const to64 = (u) => {
    let s = "";
    for (let i = 0; i < u.length; i += 32768) s += String.fromCharCode(...u.subarray(i, i + 32768));
    return btoa(s);
  };
  const f32 = (s) => new Float32Array(b64(s).buffer);
  const backend = "%s";
  const { useBackend } = await import("/client/backends.js");
  const why = [];
  if (!(await useBackend(tf, backend, (m) => why.push(m)))) return { unavailable: why.join("; ") };
  %s
})().then(done, (e) => done({ error: String((e && e.stack) || e) }));
"""


def run_js(browser, body, *args, backend="cpu"):
    """Run ``body`` in the page on a TensorFlow.js ``backend``; its result."""
    result = browser.execute_async_script(PRELUDE % (backend, body), *args)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(f"in the browser: {result['error']}")
    if isinstance(result, dict) and "unavailable" in result:
        if backend != "webgl":  # cpu and wasm ship with the client: they must work
            raise AssertionError(f"in the browser: {result['unavailable']}")
        pytest.skip(f"this Chromium has no float32 WebGL ({result['unavailable']})")
    return result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def f32(tensor: torch.Tensor) -> str:
    return b64(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def start_chromium():
    """A headless Chromium with its own fresh profile (its own storage: its own device)."""
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    if not TFJS.is_file():
        pytest.skip("needs TensorFlow.js in web/node_modules: run `npm ci --prefix web`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(120)
    return driver


@pytest.fixture(scope="module")
def chromium():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium):
    """Headless Chromium (one per module); each test leaves its page at the end, so that
    no long poll of the page holds a server's shutdown up."""
    yield chromium
    chromium.get("about:blank")


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A real server whose client page is the origin of the modules for tests that call
    them directly."""
    tmp = tmp_path_factory.mktemp("origin")
    server = ServerProcess(
        write_config(tmp / "origin.toml", experiment(name="browser-origin", rounds=1)),
        tmp / "state",
        tmp / "server.log",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def page(origin, browser):
    """The browser on the client page of ``origin``."""
    browser.get(origin.url + "/client")
    wait_for(browser, "backend", lambda text: "TensorFlow.js" in text and " on " in text)
    return origin


# --- the page ---------------------------------------------------------------------------


def text_of(browser, element_id):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def wait_for(browser, element_id, predicate, timeout=60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout, poll_frequency=0.2).until(
            lambda b: predicate(text_of(b, element_id))
        )
    except TimeoutException:
        shown = {i: text_of(browser, i) for i in ("status", "device-id", "error", "log")}
        raise AssertionError(f"{element_id} never matched; the page shows {shown}") from None
    return text_of(browser, element_id)


def join(browser, url, data: Path, *, secret: str | None = SECRET, field: str = "data-file"):
    """Open the client page, type the secret, pick the examples (a file, or a folder with
    ``field="data-folder"``), press the button."""
    from selenium.webdriver.common.by import By

    browser.get(url + "/client")
    wait_for(browser, "backend", lambda text: "TensorFlow.js" in text and " on " in text)
    if secret is not None:
        browser.find_element(By.ID, "secret").send_keys(secret)
    browser.find_element(By.ID, field).send_keys(str(data))
    wait_for(browser, "data-info", lambda text: "examples" in text and "no examples" not in text)
    browser.find_element(By.ID, "start").click()


def png(pixels: np.ndarray) -> bytes:
    """A PNG file of 8-bit ``pixels``: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (no
    colour profile or gamma chunk: a browser decodes it to exactly these values)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else {3: 2, 4: 6}[pixels.shape[2]]  # grey, RGB, RGBA
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels.reshape(h, -1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw)),
            chunk(b"IEND", b""),
        )
    )


def image_folder(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Examples (n, 1, H, W) in [0, 1] as 8-bit grey PNGs and a labels.csv in ``folder``."""
    folder.mkdir(parents=True)
    lines = ["filename,label"]
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        (folder / f"{i:04d}.png").write_bytes(png(np.rint(image[0] * 255)))
        lines.append(f"{i:04d}.png,{int(label)}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def partition(config_path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    from fedge.config import load_config
    from fedge.data.load import load_data, partition_data

    config = load_config(config_path)
    data = load_data(config.data, seed=config.seed)
    rows = partition_data(data, config.partition, seed=config.seed)[k]
    return data.train.x[rows].numpy(), data.train.y[rows].numpy()


# --- same model, same spec -------------------------------------------------------------


FORWARD = """
const model = new SpecModel(tf, args[0]);
const file = st.decodeModel(b64(args[1]));
const weights = model.fromTorch(file.params);
const x = model.inputs(f32(args[2]), args[3]);
const logits = model.forward(weights, x);
const back = st.encodeModel(model.toTorch(weights), {}, 0);
return { logits: to64(new Uint8Array(logits.dataSync().buffer)), back: to64(back) };
"""


def js_logits(browser, spec, model_file: bytes, x: torch.Tensor, backend="cpu"):
    out = run_js(browser, FORWARD, spec, b64(model_file), f32(x), len(x), backend=backend)
    logits = torch.from_numpy(np.frombuffer(unb64(out["logits"]), dtype=np.float32).copy())
    return logits.reshape(len(x), -1), unb64(out["back"])


@pytest.mark.parametrize(
    ("name", "backend"),
    [("logreg", "cpu"), ("mlp", "cpu"), ("cnn", "cpu"), ("cnn", "webgl"), ("cnn", "wasm")],
)
def test_tfjs_forward_equals_pytorch(page, browser, name, backend):
    spec = SPECS[name]
    model = build_model(load_spec(spec), seed=3)
    params = get_params(model)
    x = torch.randn(9, *spec["input_shape"], generator=torch.Generator().manual_seed(1))
    model_file = encode_model(params, {}, model_version=0)
    logits, back = js_logits(browser, spec, model_file, x, backend)
    with torch.no_grad():
        expected = model(x)
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-4, rtol=0), (logits - expected).abs().max()
    # PyTorch → TensorFlow.js → PyTorch layouts give back the very same numbers.
    _, again, _ = decode_model(back)
    assert again.keys() == params.keys()
    assert all(torch.equal(again[k], params[k]) for k in params)


def test_lenet_like_model_from_a_real_server_gives_pytorch_logits(federation, browser, tmp_path):
    """The model a real server hands out, downloaded by the page's own protocol code."""
    spec_path = tmp_path / "digits_cnn.json"
    spec_path.write_text(json.dumps(DIGITS_CNN))
    data = experiment(name="browser-cnn", rounds=1)
    data["model"] = {"spec": str(spec_path)}
    server = federation(data)
    browser.get(server.url + "/client")
    x, _ = partition(server.config, 0)
    x = torch.from_numpy(x[:16])
    out = run_js(
        browser,
        """
        const { Server } = await import("/client/protocol.js");
        const server = new Server();
        const { token } = await server.enroll(args[0], "browser");
        const task = await server.checkin(token, 0);
        const { bytes } = await server.download(token, task.model_url);
        const model = new SpecModel(tf, task.spec);
        const weights = model.fromTorch(st.decodeModel(bytes).params);
        const logits = model.forward(weights, model.inputs(f32(args[1]), args[2]));
        return { file: to64(bytes), logits: to64(new Uint8Array(logits.dataSync().buffer)) };
        """,
        SECRET,
        f32(x),
        len(x),
    )
    version, params, _ = decode_model(unb64(out["file"]))
    assert version == 0
    model = build_model(load_spec(DIGITS_CNN))
    model.load_state_dict(params)
    with torch.no_grad():
        expected = model(x)
    logits = torch.from_numpy(np.frombuffer(unb64(out["logits"]), dtype=np.float32).copy())
    assert torch.allclose(logits.reshape(expected.shape), expected, atol=1e-4, rtol=0)


def test_a_spec_the_browser_cannot_build_is_refused_clearly(page, browser):
    message = run_js(
        browser,
        """
        try { new SpecModel(tf, args[0]); return "built"; } catch (e) { return e.message; }
        """,
        {"input_shape": [4], "layers": [{"type": "batchnorm"}, {"type": "dense", "units": 2}]},
    )
    assert "cannot build layer 0" in message and "batchnorm" in message


# --- same local SGD, same strategy client halves ---------------------------------------

TRAIN = """
const [spec, modelFile, stateFile, x, y, n, training, strategy, orders] = args;
const model = new SpecModel(tf, spec);
const file = st.decodeModel(b64(modelFile));
const half = train.clientHalf(strategy);
const extras = file.extras.c ? { c: model.fromTorch(file.extras.c) } : {};
const own = stateFile ? { c: model.fromTorch(st.decodeModel(b64(stateFile)).extras.c) } : null;
let epoch = 0;
const result = await train.trainLocal(tf, {
  model, weights: model.fromTorch(file.params), x: model.inputs(f32(x), n),
  y: Int32Array.from(y), n, training, half, extras, clientState: own,
  order: () => Int32Array.from(orders[epoch++]),
});
const out = {};
for (const [group, tensors] of Object.entries(result.extras)) out[group] = model.toTorch(tensors);
const update = st.encodeUpdate(
  { params: model.toTorch(result.weights), extras: out, numSamples: n,
    numSteps: result.numSteps, metrics: result.metrics },
  { round: 1, modelVersion: 0 },
);
const own2 = result.clientState && { c: model.toTorch(result.clientState.c) };
return { update: to64(update), state: own2 && to64(st.encodeModel({}, own2, 0)) };
"""


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("fedavg", "cpu"),
        ("fedprox", "cpu"),
        ("scaffold", "cpu"),
        ("scaffold", "webgl"),
        ("fedprox", "wasm"),
    ],
)
def test_local_sgd_and_client_half_equal_pytorch(page, browser, name, backend):
    """PyTorch's batches (its random permutations, handed to the browser), SGD with
    momentum and weight decay, and the strategy's client half: same weights and reports."""
    spec = SPECS["cnn"]
    model = build_model(load_spec(spec), seed=5)
    params = get_params(model)
    gen = torch.Generator().manual_seed(2)
    n = 23
    x = torch.randn(n, *spec["input_shape"], generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    local = LocalTraining(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.01)
    strategy, config = {
        "fedavg": (FedAvg(), {"name": "fedavg"}),
        "fedprox": (FedProx(mu=0.5), {"name": "fedprox", "mu": 0.5}),
        "scaffold": (Scaffold(num_clients=4), {"name": "scaffold"}),
    }[name]
    extras, state = {}, None
    if name == "scaffold":
        extras = {"c": {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in params.items()}}
        state = {"c": {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in params.items()}}
    task = ClientTask(round=1, params=params, extras=extras, client_state=state)
    reference = client_generator(0, 1, 7)
    orders = [torch.randperm(n, generator=reference).tolist() for _ in range(local.epochs)]
    expected = train_client(model, strategy, task, x, y, local, client_generator(0, 1, 7))

    out = run_js(
        browser,
        TRAIN,
        spec,
        b64(encode_model(params, extras, model_version=0)),
        b64(encode_model({}, state, model_version=0)) if state else None,
        f32(x),
        y.tolist(),
        n,
        {
            "epochs": 2,
            "batch_size": 8,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 0.01,
            "drop_last": False,
        },
        config,
        orders,
        backend=backend,
    )
    got = decode_update(unb64(out["update"]), device="browser").update
    assert got.num_steps == expected.num_steps == 6
    assert got.num_samples == n
    assert got.metrics["examples"] == expected.metrics["examples"]
    assert got.metrics["train_loss"] == pytest.approx(expected.metrics["train_loss"], abs=1e-5)
    for k, v in expected.params.items():
        assert torch.allclose(got.params[k], v, atol=1e-4, rtol=0), k
    moved = max((expected.params[k] - params[k]).abs().max() for k in params)
    assert moved > 1e-2  # the check is not vacuous: training moved the weights
    assert got.extras.keys() == expected.extras.keys()
    if name == "scaffold":
        for k, v in expected.extras["delta_c"].items():
            assert torch.allclose(got.extras["delta_c"][k], v, atol=1e-4, rtol=0), k
        _, _, kept = decode_model(unb64(out["state"]))
        for k, v in expected.client_state["c"].items():
            assert torch.allclose(kept["c"][k], v, atol=1e-4, rtol=0), k
    else:
        assert out["state"] is None


def test_unsupported_strategy_is_refused(page, browser):
    message = run_js(
        browser,
        "try { train.clientHalf(args[0]); return 'ran'; } catch (e) { return e.message; }",
        {"name": "fedfancy"},
    )
    assert "cannot run the strategy" in message and "fedfancy" in message


# --- the same files --------------------------------------------------------------------


def _header(data: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def test_safetensors_round_trip_between_python_and_the_browser(page, browser):
    gen = torch.Generator().manual_seed(0)
    update = ClientUpdate(
        client="d",
        params={
            "fc.weight": torch.randn(3, 4, generator=gen),
            "fc.bias": torch.randn(3, generator=gen),
        },
        num_samples=17,
        num_steps=3,
        metrics={"train_loss": 0.25, "examples": 17},
        extras={
            "delta_c": {"fc.weight": torch.randn(3, 4, generator=gen), "fc.bias": torch.zeros(3)}
        },
    )
    python_file = encode_update(update, round=4, model_version=2)
    mixed = st_save(
        {
            "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
            "a": torch.randn(2, dtype=torch.float64, generator=gen),
            "c": torch.tensor([1, 2, 255], dtype=torch.uint8),
            "e": torch.zeros(0),
            "d": torch.randn(5, generator=gen),
        }
    )
    out = run_js(
        browser,
        """
        const [pyUpdate, pyMixed, w, bias] = args.map((a) => (typeof a === "string" ? b64(a) : a));
        const decoded = st.decodeUpdate(pyUpdate);
        const again = st.serialize(st.parse(pyUpdate).tensors, st.parse(pyUpdate).metadata);
        const mixed = st.serialize(st.parse(pyMixed).tensors, st.parse(pyMixed).metadata);
        const reread = st.parse(again);
        const stable = to64(st.serialize(reread.tensors, reread.metadata)) === to64(again);
        const fresh = st.encodeUpdate(
          { params: { "fc.weight": { dtype: "F32", shape: [2, 2], data: Float32Array.from(w) },
                      "fc.bias": { dtype: "F32", shape: [2], data: Float32Array.from(bias) } },
            extras: {
              delta_c: { "fc.bias": { dtype: "F32", shape: [2], data: new Float32Array(2) } },
            },
            numSamples: 5, numSteps: 2, metrics: { train_loss: 1.5, examples: 10 } },
          { round: 3, modelVersion: 1 },
        );
        return {
          seen: { round: decoded.round, modelVersion: decoded.modelVersion,
                  numSamples: decoded.numSamples, numSteps: decoded.numSteps,
                  metrics: decoded.metrics, bias: Array.from(decoded.params["fc.bias"].data) },
          again: to64(again), mixed: to64(mixed), stable, fresh: to64(fresh),
        };
        """,
        b64(python_file),
        b64(mixed),
        [1.0, -2.0, 3.5, 0.25],
        [0.5, -0.5],
    )
    # Python → browser: the browser reads what Python wrote.
    seen = out["seen"]
    assert [seen[k] for k in ("round", "modelVersion", "numSamples", "numSteps")] == [4, 2, 17, 3]
    assert seen["metrics"] == {"train_loss": 0.25, "examples": 17}
    assert seen["bias"] == pytest.approx(update.params["fc.bias"].tolist(), abs=0)
    # ... and writes it back as the reference writer lays it out: the same header (up to
    # the order of metadata keys, which the reference takes from a hash map) and the same
    # data bytes; the browser's own output is stable byte for byte.
    for original, rewritten in ((python_file, out["again"]), (mixed, out["mixed"])):
        (header, data), (header2, data2) = _header(original), _header(unb64(rewritten))
        assert data2 == data
        assert header2 == header
        order, order2 = ([k for k in h if k != "__metadata__"] for h in (header, header2))
        assert order2 == order
    assert out["stable"]
    back = decode_update(unb64(out["again"]), device="d")
    assert (back.round, back.model_version) == (4, 2)
    assert all(torch.equal(back.update.params[k], v) for k, v in update.params.items())
    assert all(
        torch.equal(back.update.extras["delta_c"][k], v)
        for k, v in update.extras["delta_c"].items()
    )
    tensors = st_load(unb64(out["mixed"]))
    assert tensors["b"].dtype == torch.int64 and tensors["b"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors["c"].tolist() == [1, 2, 255] and tensors["e"].shape == (0,)
    # Browser → Python: an update the browser wrote is a valid update for the server.
    fresh = decode_update(unb64(out["fresh"]), device="b")
    assert (fresh.round, fresh.model_version) == (3, 1)
    assert fresh.update.params["fc.weight"].tolist() == [[1.0, -2.0], [3.5, 0.25]]
    assert fresh.update.extras["delta_c"]["fc.bias"].tolist() == [0.0, 0.0]
    assert (fresh.update.num_samples, fresh.update.num_steps) == (5, 2)
    assert fresh.update.metrics == {"train_loss": 1.5, "examples": 10}


# --- the page in a federation ------------------------------------------------------------


@pytest.fixture
def second_browser(chromium):
    """Another headless Chromium, with its own profile: a second browser device."""
    driver = start_chromium()
    yield driver
    driver.quit()


def test_two_browsers_and_two_python_devices_train_one_federation(
    federation, browser, second_browser, tmp_path
):
    """FedAvg, two rounds, four devices: two `fedge client` processes and two browsers
    (separate profiles, so separate devices). One browser's examples are an .npz picked
    in the file dialog, the other's a folder of PNG images with a labels.csv picked in the
    folder dialog. Every round's aggregate holds both browsers' updates; the status and
    the dashboard give each device's kind."""
    data = experiment(name="browser-mixed", rounds=2)
    data["partition"]["num_clients"] = 4
    server = federation(data)
    x, y = partition(server.config, 2)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    x3, y3 = partition(server.config, 3)
    folder = image_folder(tmp_path / "my-images", x3, y3)
    clients = start_clients(server, tmp_path / "clients", count=2)
    join(browser, server.url, tmp_path / "mine.npz")
    join(second_browser, server.url, folder, field="data-folder")
    assert f"{len(y3)} examples (images)" in text_of(second_browser, "data-info")
    for page_ in (browser, second_browser):
        wait_for(page_, "status", lambda text: text.startswith("finished"), timeout=240)
    wait_for_clients(clients)
    devices = [text_of(b, "device-id") for b in (browser, second_browser)]
    assert len(set(devices)) == 2
    for page_ in (browser, second_browser):
        assert text_of(page_, "accepted") == "2"
        assert text_of(page_, "error") == ""
        assert "after training" in text_of(page_, "accuracy")
        assert text_of(page_, "backend").endswith(" on wasm")  # the default, the fastest
    status = server.status()
    assert status["finished"] and status["model_version"] == 2
    assert status["devices"]["by_kind"] == {"python": 2, "browser": 2}
    kinds = {d["id"]: d["kind"] for d in status["devices"]["recent"]}
    assert len(kinds) == 4 and sorted(kinds.values()) == ["browser", "browser", "python", "python"]
    assert all(kinds[d] == "browser" for d in devices)
    rounds = round_records(server.state)
    assert [r["status"] for r in rounds.values()] == ["closed", "closed"]
    for record in rounds.values():
        assert len(record["devices"]) == 4
        assert set(devices) <= set(record["devices"])
    # The dashboard lists each device with its kind.
    browser.get(server.url + "/")
    rows = wait_for(browser, "device-list", lambda text: len(text.splitlines()) == 4)
    shown = dict(line.split()[:2] for line in rows.splitlines())
    assert shown == kinds


def test_scaffold_round_with_a_browser_device(federation, browser, tmp_path):
    """SCAFFOLD: the browser's Δc passes the server's strict checks, its c_i is kept in
    IndexedDB and used in the next round. The page starts from a demo link whose fragment
    carries the secret and the examples (a data: URL of JSON)."""
    server = federation(
        experiment(name="browser-scaffold", rounds=2, strategy={"name": "scaffold"})
    )
    x, y = partition(server.config, 2)
    examples = json.dumps({"x": x.tolist(), "y": y.tolist()}).encode()
    clients = start_clients(server, tmp_path / "clients", count=2)
    data_url = quote("data:application/json;base64," + b64(examples), safe="")
    browser.get(f"{server.url}/client#secret={SECRET}&data={data_url}")  # a fragment: not sent
    wait_for(browser, "data-info", lambda text: "demo data" in text)
    assert "secret" not in browser.current_url  # dropped from the address bar
    wait_for(browser, "status", lambda text: text.startswith("finished"), timeout=240)
    wait_for_clients(clients)
    assert text_of(browser, "accepted") == "2"
    assert text_of(browser, "strategy") == "scaffold"
    device = text_of(browser, "device-id")
    rounds = round_records(server.state)
    assert len(rounds) == 2
    for record in rounds.values():
        assert record["status"] == "closed" and device in record["devices"]
    assert server.status()["rejections"] == []
    kept = run_js(
        browser,
        """
        const store = await import("/client/store.js");
        const bytes = await store.loadClientState();
        return bytes ? to64(bytes) : null;
        """,
    )
    _, _, state = decode_model(unb64(kept))
    names = {"dense1.weight", "dense1.bias", "dense3.weight", "dense3.bias"}  # the MLP's
    assert set(state["c"]) == names
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in state["c"].values())


def test_a_reload_resumes_as_the_same_device(federation, browser, tmp_path):
    """The tab reloads while its round waits for another device: the page comes back as
    the same device (no secret needed), and trains the next round under that id."""
    data = experiment(name="browser-reload", rounds=2)
    data["server"] = {"clients_per_round": 2}
    server = federation(data)
    python = make_devices(server, tmp_path, parse_config(data))[1]
    x, y = partition(server.config, 0)
    # Examples nested in their (1, 8, 8) shape, as a JSON file.
    (tmp_path / "mine.json").write_text(json.dumps({"x": x.tolist(), "y": y.tolist()}))
    join(browser, server.url, tmp_path / "mine.json")
    wait_for(browser, "accepted", lambda text: text == "1", timeout=120)
    first = text_of(browser, "device-id")

    browser.refresh()
    wait_for(browser, "device-id", lambda text: text == first)
    assert "resuming as device" in text_of(browser, "log")
    join(browser, server.url, tmp_path / "mine.json", secret=None)  # no secret needed now
    wait_for(browser, "status", lambda text: text.startswith(("checking in", "waiting")))
    assert python.step()[0] == "trained"  # round 1 closes with both updates
    # Round 2, the first after the reload:
    wait_for(browser, "accepted", lambda text: text == "1", timeout=120)
    assert finish(python) == "trained"
    wait_for(browser, "status", lambda text: text.startswith("finished"), timeout=120)
    python.close()
    assert text_of(browser, "device-id") == first
    status = server.status()
    assert status["devices"]["by_kind"] == {"browser": 1, "python": 1}
    rounds = round_records(server.state)
    assert len(rounds) == 2 and all(first in r["devices"] for r in rounds.values())


def test_the_page_rides_out_a_server_restart(federation, browser, tmp_path):
    """SIGKILL the server while the page long-polls: the page retries with backoff, shows
    its retries, and carries on with the restarted server (same state, same port)."""
    data = experiment(name="browser-restart", rounds=2)
    data["server"] = {"clients_per_round": 2}
    server = federation(data)
    python = make_devices(server, tmp_path, parse_config(data))[1]
    x, y = partition(server.config, 0)
    np.savez_compressed(tmp_path / "mine.npz", x=x, y=y)  # deflated inside the zip
    join(browser, server.url, tmp_path / "mine.npz")
    wait_for(browser, "accepted", lambda text: text == "1", timeout=120)
    server.kill()
    wait_for(browser, "retries", lambda text: int(text) >= 2)
    assert "network error" in text_of(browser, "log")
    server.start(port=server.port)
    assert finish(python) == "trained"  # round 1 closes
    assert finish(python) == "trained"  # round 2
    wait_for(browser, "status", lambda text: text.startswith("finished"), timeout=120)
    python.close()
    assert text_of(browser, "accepted") == "2"
    rounds = round_records(server.state)
    assert len(rounds) == 2 and all(len(r["devices"]) == 2 for r in rounds.values())


def test_the_page_shows_the_servers_refusals(federation, browser, tmp_path):
    """A stale update (a round that is over) gets 409 and a wrong token 401: the page says so."""
    server = federation(experiment(name="browser-refusals", rounds=1))
    x, y = partition(server.config, 0)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    enrolled = httpx.post(f"{server.url}/v1/devices", json={"secret": SECRET, "kind": "browser"})
    identity = enrolled.json()
    browser.get(server.url + "/client")
    wait_for(browser, "backend", lambda text: "TensorFlow.js" in text)
    # An update left over from round 7, as if the tab had slept through it.
    run_js(
        browser,
        """
        const store = await import("/client/store.js");
        store.saveIdentity(args[0]);
        const update = st.encodeUpdate(
          { params: {}, extras: {}, numSamples: 1, numSteps: 1, metrics: {} },
          { round: 7, modelVersion: 0 });
        const url = "/v1/rounds/7/updates";
        await store.savePending({ url, key: "k7", round: 7, body: update, state: null });
        return true;
        """,
        identity,
    )
    join(browser, server.url, tmp_path / "mine.npz", secret=None)
    wait_for(browser, "error", lambda text: "Round 7" in text and "409" in text)
    wait_for(browser, "log", lambda text: "error: Round 7" in text)
    run_js(
        browser,
        """
        const store = await import("/client/store.js");
        store.saveIdentity({ device_id: args[0], token: args[0] + ".wrong" });
        return true;
        """,
        identity["device_id"],
    )
    join(browser, server.url, tmp_path / "mine.npz", secret=None)
    message = wait_for(browser, "error", lambda text: "does not know this device" in text)
    assert "enrollment secret" in message
    assert text_of(browser, "status") == "stopped"


# --- serving ---------------------------------------------------------------------------


def test_client_files_are_served_with_their_types_and_etags(page, browser):
    if not TFJS.is_file():
        pytest.skip("needs TensorFlow.js in web/node_modules: run `npm ci --prefix web`")
    html = httpx.get(f"{page.url}/client")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    csp = html.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self' 'wasm-unsafe-eval';" in csp
    for name in ("main.js", "tf.fesm.min.js", "tf-backend-wasm.es2017.min.js"):
        script = httpx.get(f"{page.url}/client/{name}")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        again = httpx.get(
            f"{page.url}/client/{name}", headers={"If-None-Match": script.headers["etag"]}
        )
        assert again.status_code == 304
    for name in sorted(p.name for p in WASM.glob("*.wasm")):
        binary = httpx.get(f"{page.url}/client/{name}")
        assert binary.status_code == 200 and binary.headers["content-type"] == "application/wasm"
        assert binary.content == (WASM / name).read_bytes()
    # The page runs on wasm, and everything it loaded came from this server.
    assert text_of(browser, "backend").endswith(" on wasm")
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert any(url.endswith("/client/tfjs-backend-wasm-simd.wasm") for url in loaded), loaded
    assert all(url.startswith(page.url + "/") for url in loaded), loaded
    for name in ("nothing.js", "nothing.wasm", "package.json", "..%2Fpackage.json"):
        assert httpx.get(f"{page.url}/client/{name}").status_code in (400, 404), name


def test_client_page_without_tensorflow_js_says_how_to_install(federation, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGE_WEB_DIR", str(tmp_path / "no-web"))
    server = federation(experiment(name="browser-missing", rounds=1))
    for path in ("/client", "/client/main.js"):
        answer = httpx.get(server.url + path)
        assert answer.status_code == 503
        assert "npm ci --prefix web" in answer.json()["error"]


def test_without_the_wasm_backend_the_page_falls_back(federation, browser, tmp_path, monkeypatch):
    """A web folder whose node_modules lacks @tensorflow/tfjs-backend-wasm: the page says
    why and trains on the next backend; ``#backend=cpu`` picks one."""
    web = tmp_path / "web"
    (web / "node_modules" / "@tensorflow").mkdir(parents=True)
    for part in ("client.html", "src"):
        (web / part).symlink_to(ROOT / "web" / part)
    (web / "node_modules" / "@tensorflow" / "tfjs").symlink_to(TFJS.parents[1])
    monkeypatch.setenv("FEDGE_WEB_DIR", str(web))
    server = federation(experiment(name="browser-no-wasm", rounds=1))
    assert httpx.get(server.url + "/client/tfjs-backend-wasm-simd.wasm").status_code == 404
    browser.get(server.url + "/client")
    shown = wait_for(browser, "backend", lambda text: " on " in text)
    assert shown.endswith((" on webgl", " on cpu"))
    assert "backend wasm is not available here: cannot load" in text_of(browser, "log")
    assert text_of(browser, "error") == ""
    browser.get(server.url + "/client#backend=cpu")
    browser.refresh()
    assert wait_for(browser, "backend", lambda text: " on " in text).endswith(" on cpu")
