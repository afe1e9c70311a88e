"""Local training in the browser client next to the Python client, on this machine.

The LeNet CNN (``preset_spec("lenet", (1, 28, 28), 10)``: 44,426 parameters) trains one
epoch at a time on the first ``--examples`` Fashion-MNIST training images (batch 32, SGD
lr 0.01, momentum 0.9, weight decay 5e-4, FedAvg's client half), from the same initial
weights and in the same batch order, until each case has trained for at least
``--min-seconds``; the number is training examples per second.

* Python: :func:`fedge.fl.local.train_client`, the code ``fedge client`` runs, with one
  torch thread (the reference of the ratios: the browser's backends compute on one
  thread) and with torch's default thread count (as ``fedge client`` runs it).
* Browser: headless Chromium (Debian's ``/usr/bin/chromium`` with its chromedriver, via
  Selenium) on the client page that a real ``fedge server`` (a subprocess on loopback)
  serves at ``/client``; the page's own modules (``spec.js``'s model from the same spec,
  ``train.js``'s ``trainLocal``, the loop the page runs in a round) on each TensorFlow.js
  backend the client ships: ``wasm`` (WebAssembly with SIMD, single-threaded: the page
  is not cross-origin isolated), ``webgl`` (with ``--disable-gpu``, as on a server
  without a GPU: SwiftShader, WebGL on the CPU), ``cpu`` (plain JavaScript). One short
  warm-up run per case is not timed.

Also printed: each case's mean training loss over its first epoch. With the same weights
and batches every case computes the same SGD, so these agree to float32 rounding — a
backend that computed something else would show here.

Usage::

    python benchmarks/browser.py                                # 1024 examples, ≥ 5 s a case
    python benchmarks/browser.py --examples 256 --min-seconds 1    # a smoke test
    python benchmarks/browser.py --backends wasm cpu --json /tmp/browser.json

Needs ``npm ci --prefix web``, chromium and chromium-driver, and Fashion-MNIST
(``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
import torch

from fedge.data.fashion_mnist import load_fashion_mnist
from fedge.federation.wire import encode_model
from fedge.fl.local import LocalTraining, client_generator, get_params, train_client
from fedge.fl.strategy import FedAvg
from fedge.fl.types import ClientTask
from fedge.models.spec import build_model, preset_spec

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("wasm", "webgl", "cpu")
TRAINING = {
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "drop_last": False,
}


def say(message: str) -> None:
    print(f"[browser {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Python ------------------------------------------------------------------------------


def python_case(spec, params, x, y, threads: int, min_seconds: float) -> dict[str, Any]:
    """Epochs of ``train_client`` (FedAvg) until ``min_seconds`` have passed."""
    torch.set_num_threads(threads)
    model = build_model(spec)
    local = LocalTraining(**TRAINING)
    task = ClientTask(round=1, params=params)

    def epoch(max_steps=None):
        return train_client(
            model, FedAvg(), task, x, y, local, client_generator(0, 1, 0), max_steps=max_steps
        )

    epoch(max_steps=4)  # warm-up
    first, samples, started = None, 0, time.perf_counter()
    while True:
        update = epoch()
        first = first if first is not None else update.metrics["train_loss"]
        samples += len(x)
        seconds = time.perf_counter() - started
        if seconds >= min_seconds:
            break
    return {"samples": samples, "seconds": seconds, "first_loss": first}


# --- the browser ---------------------------------------------------------------------------

# Runs in the client page: the page's own model and training loop on one backend.
TRAIN = """
const done = arguments[arguments.length - 1];
const [backend, spec, modelFile, xs, ys, n, training, order, minSeconds] =
  Array.from(arguments).slice(0, -1);
(async () => {
  const tf = await import("/client/tf.fesm.min.js");
  const { useBackend } = await import("/client/backends.js");
  const st = await import("/client/safetensors.js");
  const { SpecModel } = await import("/client/spec.js");
  const train = await import("/client/train.js");
  const why = [];
  if (!(await useBackend(tf, backend, (m) => why.push(m)))) return { unavailable: why.join("; ") };
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const model = new SpecModel(tf, spec);
  const weights = model.fromTorch(st.decodeModel(b64(modelFile)).params);
  const x = model.inputs(new Float32Array(b64(xs).buffer), n);
  const y = Int32Array.from(ys);
  const perm = Int32Array.from(order);
  const run = async (inputs, count, order) => {
    const result = await train.trainLocal(tf, {
      model, weights, x: inputs, y: y.subarray(0, count), n: count, training,
      half: train.clientHalf({ name: "fedavg" }), extras: {}, clientState: null,
      order: () => order,
    });
    tf.dispose(result.weights);
    return result.metrics.train_loss;
  };
  // Warm-up on a few batches: kernels compiled, memory allocated.
  const few = Math.min(n, 128);
  const head = tf.slice(x, 0, few);
  await run(head, few, Int32Array.from({ length: few }, (_, i) => i));
  head.dispose();
  let first = null, samples = 0, seconds = 0;
  const started = performance.now();
  while (seconds < minSeconds) {
    const loss = await run(x, n, perm);
    first ??= loss;
    samples += n;
    seconds = (performance.now() - started) / 1000;
  }
  const info = { tensors: tf.memory().numTensors };
  tf.dispose([weights, x]);
  return { samples, seconds, first_loss: first, backend: tf.getBackend(), ...info };
})().then(done, (e) => done({ error: String((e && e.stack) || e) }));
"""


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """``fedge server`` on loopback (a tiny digits experiment): it serves ``/client``."""
    config = folder / "serve.toml"
    config.write_bytes(
        tomli_w.dumps(
            {
                "name": "browser-benchmark",
                "seed": 0,
                "rounds": 1,
                "data": {"name": "digits"},
                "partition": {"scheme": "iid", "num_clients": 2},
                "model": {"preset": "logreg"},
                "deploy": {"enrollment_secret": "browser-benchmark-secret", "evaluate": False},
            }
        ).encode()
    )
    command = [sys.executable, "-m", "fedge", "server", str(config), "--port", "0"]
    command += ["--state", str(folder / "state")]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on" in line:
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError(f"fedge server did not start: {(folder / 'server.log').read_text()}")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise SystemExit("needs chromium and chromium-driver (apt-get install them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_script_timeout(1800)
    return browser


def browser_cases(
    spec, params, x, y, order, backends, min_seconds: float
) -> tuple[dict[str, dict[str, Any]], str]:
    if not (ROOT / "web" / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        raise SystemExit("needs TensorFlow.js: run `npm ci --prefix web`")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-browser-bench-") as tmp:
        server, url = start_server(Path(tmp))
        browser = None
        try:
            browser = chromium()
            version = browser.capabilities.get("browserVersion", "?")
            browser.get(url + "/client")
            args = (
                spec.model_dump(mode="json", exclude_none=True),
                base64.b64encode(encode_model(params, {}, model_version=0)).decode(),
                base64.b64encode(x.numpy().astype("float32").tobytes()).decode(),
                y.tolist(),
                len(x),
                TRAINING,
                order,
                min_seconds,
            )
            for backend in backends:
                say(f"browser, {backend} backend")
                out = browser.execute_async_script(TRAIN, backend, *args)
                if "error" in out:
                    raise RuntimeError(f"{backend} in the browser: {out['error']}")
                results[backend] = out
                if "unavailable" in out:
                    say(f"  not available: {out['unavailable']}")
        finally:
            if browser is not None:
                browser.quit()
            server.terminate()
            server.wait(timeout=30)
    return results, version


# --- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    data = load_fashion_mnist()
    x = data.train.x[: args.examples].contiguous()
    y = data.train.y[: args.examples].contiguous()
    spec = preset_spec("lenet", (1, 28, 28), 10)
    params = get_params(build_model(spec, seed=0))
    # Python's batch order of the epoch (train_client draws it from this generator); the
    # browser gets the same one.
    order = torch.randperm(len(x), generator=client_generator(0, 1, 0)).tolist()

    default_threads = torch.get_num_threads()
    rows: list[tuple[str, dict[str, Any] | None, str]] = []
    for threads in dict.fromkeys((1, default_threads)):
        say(f"python, {threads} thread(s)")
        case = python_case(spec, params, x, y, threads, args.min_seconds)
        label = f"python: fedge client's train_client, torch {threads} thread(s)"
        rows.append((label, case, ""))
    torch.set_num_threads(default_threads)
    browser, version = browser_cases(spec, params, x, y, order, args.backends, args.min_seconds)
    for backend in args.backends:
        out = browser[backend]
        note = out.get("unavailable", "")
        rows.append(
            (f"browser: Chromium {version}, TensorFlow.js {backend}", None if note else out, note)
        )

    reference = rows[0][1]["samples"] / rows[0][1]["seconds"]
    cpu = os.cpu_count()
    load = "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"browser: LeNet (44,426 params) on {len(x)} Fashion-MNIST images, batch 32, "
        f"SGD lr 0.01 momentum 0.9 wd 5e-4, >= {args.min_seconds:g} s per case; "
        f"{platform.machine()}, {cpu} CPU cores, {load} at the end"
    )
    print(f"{'case':<64} {'samples/s':>10} {'vs 1st row':>10} {'1st-epoch loss':>15}")
    report = []
    for label, case, note in rows:
        if case is None:
            print(f"{label:<64} {'-':>10} {'-':>10} {'-':>15}  ({note})")
            report.append({"case": label, "unavailable": note})
            continue
        rate = case["samples"] / case["seconds"]
        print(f"{label:<64} {rate:>10.0f} {rate / reference:>9.3f}x {case['first_loss']:>15.6f}")
        report.append({"case": label, "samples_per_second": rate, **case})
    losses = [case["first_loss"] for _, case, _ in rows if case is not None]
    spread = max(losses) - min(losses)
    print(f"largest difference between first-epoch losses: {spread:.2e}")
    if spread > 1e-3:
        raise SystemExit("the cases did not train the same model: see the losses above")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
