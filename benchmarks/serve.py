"""Throughput and latency of ``POST /predict`` for the LeNet CNN: ``fedge serve``
(uvicorn, micro-batched onnxruntime) next to a naive Flask endpoint that answers one
request at a time (the seed's design), measured in the same run with the same client.

Both servers run the same ``model.onnx`` with onnxruntime on one intra-op thread, so the
ratio measures the serving design (asynchronous server + micro-batching versus one
synchronous request at a time), not the runtime. Each request carries one 1×28×28 example.
The load generator is an asyncio httpx client with C connections, each sending its next
request as soon as the last one is answered, for ``--seconds`` per case after a warm-up.
Client and servers share this machine's cores: compare numbers only within one run.

The load generator runs in a process of its own (``--generate``), so that the server's
event loop and the client's do not share one Python interpreter.

A second case appends samples: ``--appends`` devices each upload one labelled sample to
``POST /v2/models/NAME/samples`` at the same moment (with a write token), then the newest
dataset version is checked to hold every one of them; the same uploads made one after
another give the baseline.

Usage::

    python benchmarks/serve.py                          # concurrency 1, 32 and 200, 10 s each
    python benchmarks/serve.py --seconds 1 --warmup 0.2 # smoke run

Target of issue 5: at concurrency 32, at least 3x the Flask endpoint's requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

FLASK_SERVER = """
import sys
import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], sess_options=options,
                               providers=["CPUExecutionProvider"])
app = Flask(__name__)

@app.post("/predict")
def predict():
    x = np.asarray(request.get_json()["instances"], dtype=np.float32).reshape(-1, 1, 28, 28)
    logits = session.run(None, {"input": x})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return jsonify(prediction=logits.argmax(axis=1).tolist(),
                   probabilities=(e / e.sum(axis=1, keepdims=True)).tolist())

server = make_server("127.0.0.1", 0, app, threaded=False)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def server(cmd: list[str], ready_path: str, log: Path) -> Iterator[str]:
    """Start a server that prints ``... listening on URL`` first; yield URL once ready."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line}{log.read_text()}")
        url = line.split()[-1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2).status_code < 500:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


class _Connection:
    """One keep-alive HTTP/1.1 connection that reconnects when the server closes it (the
    Flask development server speaks HTTP/1.0 and closes after every answer)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").lower().split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        await self.reader.readexactly(int(fields.get("content-length", 0)))
        if lines[0].startswith("http/1.0") or fields.get("connection") == "close":
            self.writer.close()
            self.reader = self.writer = None
        return status


async def load(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    warmup: float,
    path: str = "/predict",
    media: str = "application/json",
) -> dict:
    """Closed-loop load: ``concurrency`` connections, each with one request in flight,
    each request ``POST path`` with ``body``.

    The client writes prebuilt HTTP/1.1 requests on raw asyncio streams: an HTTP library
    (httpx) spends ~1-3 ms of CPU per request here, more than either server, and on a
    two-core machine it would measure itself.
    """
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {media}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    failures = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def worker() -> None:
        nonlocal failures
        connection = _Connection(host, port)
        while (now := time.perf_counter()) < stop:
            try:
                status = await connection.request(raw)
            except (OSError, asyncio.IncompleteReadError):
                # A refused or reset connection (a server's backlog full): a failed request.
                status = 0
                if connection.writer is not None:
                    connection.writer.close()
                connection.reader = connection.writer = None
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append(done - now)
                failures += status != 200
        if connection.writer is not None:
            connection.writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ms = np.array(latencies) * 1000
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "failures": failures,
    }


def generate(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    warmup: float,
    path: str = "/predict",
    media: str = "application/json",
) -> dict:
    """:func:`load` in a separate process (this script with ``--generate``)."""
    args = [url, str(concurrency), str(seconds), str(warmup), path, media]
    out = subprocess.run(
        [sys.executable, __file__, "--generate", *args],
        input=body,
        capture_output=True,
        check=True,
    )
    return json.loads(out.stdout)


def appends(url: str, token: str, store: Path, devices: int) -> dict:
    """``devices`` one-sample uploads at once, then one after another; checks that the
    newest dataset version holds every sample of each round."""
    from concurrent.futures import ThreadPoolExecutor

    from fedge.central import LocalStore
    from fedge.central.datasets import DatasetStore

    headers = {"Authorization": f"Bearer {token}"}
    datasets = DatasetStore(LocalStore(store))

    def upload(tag: int) -> int:
        x = np.full((1, 1, 28, 28), tag / 10_000, np.float32)
        body = {"instances": x.tolist(), "labels": [tag % 10]}
        return httpx.post(
            f"{url}/v2/models/lenet/samples", json=body, headers=headers, timeout=120
        ).status_code

    def held() -> set[int]:
        newest = datasets.load(datasets.get("lenet"))
        return set(np.round(newest.x[:, 0, 0, 0] * 10_000).astype(int).tolist())

    result = {}
    for mode, tags in (
        ("parallel", range(1, devices + 1)),
        ("sequential", range(devices + 1, 2 * devices + 1)),
    ):
        start = time.perf_counter()
        if mode == "parallel":
            with ThreadPoolExecutor(devices) as pool:
                statuses = list(pool.map(upload, tags))
        else:
            statuses = [upload(t) for t in tags]
        elapsed = time.perf_counter() - start
        lost = set(tags) - held()
        result[mode] = {
            "appends_per_s": devices / elapsed,
            "created": statuses.count(201),
            "lost": len(lost),
        }
    return result


def register_lenet(store: Path) -> Path:
    """Register a LeNet with random weights (production → 1); returns its ONNX file."""
    from fedge.central import LocalStore, ModelRegistry, publish_model
    from fedge.models.spec import build_model, preset_spec

    spec = preset_spec("lenet", (1, 28, 28), 10)
    registry = ModelRegistry(LocalStore(store))
    version = publish_model(registry, "lenet", spec, build_model(spec, seed=0).state_dict())
    registry.promote("lenet", version.version)
    onnx = store.parent / "model.onnx"
    onnx.write_bytes(registry.read_file(version, "model.onnx"))
    return onnx


def ensure_flask() -> None:
    """Install Flask for the baseline if this environment lacks it (it is no dependency
    of fedge)."""
    try:
        import flask  # noqa: F401
    except ImportError:
        print("installing flask for the baseline endpoint", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "flask>=3"], check=True)


def main() -> None:
    if len(sys.argv) == 8 and sys.argv[1] == "--generate":
        url, c, seconds, warmup, path, media = (
            sys.argv[2],
            int(sys.argv[3]),
            float(sys.argv[4]),
            float(sys.argv[5]),
            sys.argv[6],
            sys.argv[7],
        )
        body = sys.stdin.buffer.read()
        print(json.dumps(asyncio.run(load(url, body, c, seconds, warmup, path, media))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 200])
    parser.add_argument("--appends", type=int, default=32, help="devices uploading at once")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per case")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="fedge serve batching")
    args = parser.parse_args()
    ensure_flask()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        onnx = register_lenet(tmp_path / "store")
        x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
        body = json.dumps({"instances": x.tolist()}).encode()
        fedge_cmd = [
            sys.executable,
            "-m",
            "fedge",
            "serve",
            "--port",
            "0",
            "--store",
            str(tmp_path / "store"),
            "--max-delay-ms",
            str(args.max_delay_ms),
        ]
        flask_cmd = [sys.executable, "-c", FLASK_SERVER, str(onnx)]
        results: dict[tuple[str, int], dict] = {}
        for name, cmd, ready in (
            ("fedge", fedge_cmd, "/v2/health/ready"),
            ("flask", flask_cmd, "/predict"),
        ):
            with server(cmd, ready, tmp_path / f"{name}.log") as url:
                check = httpx.post(
                    f"{url}/predict", content=body, headers={"content-type": "application/json"}
                ).json()
                print(f"{name}: prediction {check['prediction']} for the benchmark example")
                for c in args.concurrency:
                    r = generate(url, body, c, args.seconds, args.warmup)
                    results[(name, c)] = r
                    print(
                        f"{name:5s} concurrency {c:3d}: {r['requests_per_s']:8.1f} req/s  "
                        f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                        f"failures {r['failures']}",
                        flush=True,
                    )
                if name == "fedge" and args.appends:
                    from fedge.central import LocalStore
                    from fedge.central.tokens import TokenStore

                    token = TokenStore(LocalStore(tmp_path / "store")).create(["model:lenet"])
                    a = appends(url, token, tmp_path / "store", args.appends)
                    for mode, r in a.items():
                        print(
                            f"fedge {args.appends} sample uploads, {mode:10s}: "
                            f"{r['appends_per_s']:7.1f} appends/s  201s {r['created']}  "
                            f"samples lost {r['lost']}",
                            flush=True,
                        )
                    ratio = a["parallel"]["appends_per_s"] / a["sequential"]["appends_per_s"]
                    print(f"parallel / sequential appends = {ratio:.2f}x")
        for c in args.concurrency:
            ratio = (
                results[("fedge", c)]["requests_per_s"] / results[("flask", c)]["requests_per_s"]
            )
            verdict = " (target >= 3x)" if c >= 32 else ""
            print(f"concurrency {c:3d}: fedge serve / flask throughput = {ratio:.2f}x{verdict}")


if __name__ == "__main__":
    main()
