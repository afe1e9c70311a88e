"""The federation server under load: many simulated devices against one ``fedge server``,
and a real deployment (client processes that train) next to Flower's deployment runtime.

Part 1, the load test (``--devices N --rounds R``, default 500 × 3). ``fedge server``
runs as a subprocess on loopback (port 0, a temporary ``--state``) with an experiment of
N devices, all of them in every round (Fashion-MNIST, IID, the LeNet CNN, FedAvg,
``clients_per_round = N``, ``over_selection = 1.0``, no deadline pressure, no server-side
evaluation, poll delays 0.2 to 2 s). N devices run as asyncio tasks in this process, each
with its own ``httpx.AsyncClient`` (one keep-alive connection, as a real device has). A
device enrolls, then checks in with a long poll as ``fedge client`` does (``?wait=10``:
the server answers as soon as the next round opens), sleeps ``retry_after`` when still
told to wait, and on a task
downloads the model (``If-None-Match``, cached by ETag), builds its update *without
training* — w_k = w + δ_k, δ_k a fixed tensor per device (``randn × 0.01`` seeded with
k), n_k = 1 + k mod 50, one step, ``train_loss = 1`` — encodes it with
``fedge.federation.wire.encode_update`` and uploads it under a fresh idempotency key,
until the check-in says "finished". Measured: accepted updates per second (accepted
uploads / the server's time from the first task of round 1 to the close of round R, from
``state.db``), upload latency p50/p99 (start of the POST to its answer), the server's
per-round ``seconds`` (first task → close, ``/v1/status``) and, from ``state.db``, when
in each round the last task went out, the first and last update arrived and the round
closed; the server process's peak memory (``VmHWM`` from ``/proc/PID/status`` just before
it is stopped; it includes the dataset, which the server loads to size the preset model)
and CPU seconds, and this process's CPU seconds (the load generator shares the machine's
cores with the server: httpx costs ~1 ms of CPU per request). With ``--shared-client``
all devices share one ``AsyncClient`` with N connections instead; httpcore's pool then scans all its
connections for every request and response, so the load generator's CPU grows as N² (at
N = 100: 10.7 s of CPU against 1.6 s, 18 instead of 77 updates/s) and it measures itself
rather than the server. Checked:

* exactness: with δ_k fixed, FedAvg gives w_{r+1} = w_r + Σ n_k δ_k / Σ n_k, so the final
  model must be w_0 + R · Σ n_k δ_k / Σ n_k (computed here in float64); the largest
  absolute difference is printed and the run fails above 1e-5;
* the server's SQLite (``STATE/state.db``, opened read-only after the server stopped):
  rounds 1..R closed, each with exactly N rows in ``updates`` from N distinct devices,
  the devices enrolled here.

Part 2, real processes against Flower (``--real-clients N``, default 20; 0 skips it).
The same FedAvg with training: an experiment like ``peers/flower_deploy.py``'s
(Fashion-MNIST, IID over N clients, LeNet, 1 epoch, batch 32, SGD lr 0.01 without
momentum, all N clients per round, ``threads = 1``; ``[deploy]`` over_selection 1.0,
evaluate false), ``--real-rounds`` rounds (default 2). N ``fedge client`` processes
(``OMP_NUM_THREADS=1``) start first, against a port picked free, with ``--max-backoff
0.5``; once each has loaded its data (its ``--state`` folder exists) ``fedge server``
starts on that port, so that, as in Flower's timing, process start-up is not in a round.
Measured: seconds per round (``seconds`` of each closed round in ``/v1/status``: first
task → close, i.e. download, training, upload, aggregation), the server's peak memory
(``VmHWM``), the clients' peak memory (summed RSS sampled every 0.2 s, as flower_deploy
measures it, and the sum of each client's last-seen ``VmHWM``). Then
``peers/flower_deploy.py`` runs with the same N, rounds, epochs, batch size and lr (in
its own virtual environment, created on first use) and the ratios Flower / fedge of
seconds per round, server memory and clients' memory are printed. Flower's server memory
is the summed RSS of its SuperLink, SuperExec and ServerApp processes sampled every
0.2 s; fedge's server is one process. Every process started here is stopped, also on
errors and timeouts (TERM, then KILL).

Usage::

    python benchmarks/load.py                                  # 500 × 3, then 20 real clients
    python benchmarks/load.py --devices 500 --rounds 3 --real-clients 0   # the load test only
    python benchmarks/load.py --devices 20 --rounds 2 --real-clients 2 --real-rounds 1 \\
        --skip-flower                                          # a smoke test
    python benchmarks/load.py --json /tmp/bench/load.json

One summary line per case on stdout; progress and process logs' tails on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w
import torch
from peers.flower_deploy import scratch

from fedge.federation.wire import decode_model, encode_update
from fedge.fl.types import ClientUpdate, Params

ROOT = Path(__file__).resolve().parent.parent
FLOWER_DEPLOY = Path(__file__).resolve().parent / "peers" / "flower_deploy.py"
SECRET = "fedge-load-benchmark-secret"
HOST = "127.0.0.1"
MB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
TOLERANCE = 1e-5
LONG_POLL = 10.0  # seconds a check-in may be held until a round opens, as fedge client


def say(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchmarkError(RuntimeError):
    """The run failed; the message says why."""


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` in bytes (``VmRSS``, ``VmHWM``, ...);
    empty when the process is gone."""
    fields: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """TERM, then KILL after ``grace`` seconds; waits for the process."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


class MemorySampler(threading.Thread):
    """Every ``interval`` seconds: the summed RSS of each group of processes (keeping the
    peak) and the last ``VmHWM`` seen of each process."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.groups: dict[str, list[int]] = {}
        self.peak: dict[str, int] = {}
        self.hwm: dict[int, int] = {}
        self.done = threading.Event()
        self.lock = threading.Lock()

    def watch(self, group: str, pids: list[int]) -> None:
        with self.lock:
            self.groups.setdefault(group, []).extend(pids)
            self.peak.setdefault(group, 0)

    def sample(self) -> None:
        with self.lock:
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], sum(rss(pid) for pid in pids))
                for pid in pids:
                    hwm = proc_status(pid).get("VmHWM")
                    if hwm is not None:
                        self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join(timeout=5)

    def hwm_sum(self, group: str) -> int:
        return sum(self.hwm.get(pid, 0) for pid in self.groups.get(group, []))


class FedgeServer:
    """``fedge server CONFIG --port PORT --state STATE`` as a subprocess; stdout and
    stderr go to files in ``logs``."""

    def __init__(self, config: Path, state: Path, logs: Path, port: int = 0) -> None:
        self.config, self.state, self.port = config, state, port
        self.out, self.log = logs / "server.out", logs / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> str:
        """Start the server; its URL once ``/v1/health`` answers."""
        cmd = [
            sys.executable, "-m", "fedge", "server", str(self.config),
            "--port", str(self.port), "--state", str(self.state),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FEDGE_ENROLLMENT_SECRET": SECRET}
        with self.out.open("wb") as out, self.log.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        marker = "fedge server: listening on "
        while not self.url:
            for line in self.out.read_text(errors="replace").splitlines():
                if line.startswith(marker):
                    self.url = line[len(marker) :].strip()
            if self.url:
                break
            if self.proc.poll() is not None:
                raise BenchmarkError(
                    f"fedge server exited with {self.proc.returncode}:\n{tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise BenchmarkError(f"fedge server did not start in {timeout:.0f} s")
            time.sleep(0.05)
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=2, trust_env=False).is_success:
                    return self.url
            time.sleep(0.05)
        raise BenchmarkError(f"fedge server not live after {timeout:.0f} s:\n{tail(self.log)}")

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/status", timeout=60, trust_env=False)
        response.raise_for_status()
        return dict(response.json())

    def peak_memory(self) -> int:
        """``VmHWM`` in bytes (read before stopping the server)."""
        return proc_status(self.pid).get("VmHWM", 0)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# --- experiments -------------------------------------------------------------------------


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def load_experiment(devices: int, rounds: int) -> dict[str, Any]:
    """All ``devices`` in every round; nothing trains, so local SGD settings are unused."""
    return {
        "name": "load-test",
        "seed": 0,
        "rounds": rounds,
        "data": {"name": "fashion_mnist"},
        "partition": {"scheme": "iid", "num_clients": devices},
        "model": {"preset": "lenet"},
        "server": {"clients_per_round": devices},
        "deploy": {
            "enrollment_secret": SECRET,
            "over_selection": 1.0,
            "deadline_seconds": 86_400.0,
            "evaluate": False,
            "min_poll_seconds": 0.2,
            "max_poll_seconds": 2.0,
        },
    }


def real_experiment(clients: int, rounds: int) -> dict[str, Any]:
    """What ``peers/flower_deploy.py`` trains, as a fedge experiment."""
    return {
        "name": "real-clients",
        "seed": 0,
        "rounds": rounds,
        "threads": 1,
        "data": {"name": "fashion_mnist"},
        "partition": {"scheme": "iid", "num_clients": clients},
        "model": {"preset": "lenet"},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.0},
        "server": {"clients_per_round": clients},
        "deploy": {
            "enrollment_secret": SECRET,
            "over_selection": 1.0,
            "deadline_seconds": 86_400.0,
            "evaluate": False,
        },
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- part 1: simulated devices -----------------------------------------------------------


@dataclass
class LoadCounts:
    """What the simulated devices saw."""

    upload_seconds: list[float] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    checkins: int = 0
    waits: int = 0
    downloads: int = 0
    not_modified: int = 0
    retries: int = 0
    first_task: float | None = None
    first_finished: float | None = None


@dataclass
class SimDevice:
    index: int
    device_id: str
    token: str
    num_samples: int
    delta: Params = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class LoadTest:
    """N simulated devices: each over its own ``httpx.AsyncClient`` (one connection), or
    all over one shared client with N connections (``shared``)."""

    def __init__(self, url: str, devices: int, timeout: float, *, shared: bool) -> None:
        self.url, self.n, self.timeout, self.shared = url, devices, timeout, shared
        self.counts = LoadCounts()
        #: Decoded models by ETag, shared by the devices (each keeps its own ETags).
        self.models: dict[str, Params] = {}
        self.devices: list[SimDevice] = []
        self.enroll_seconds = 0.0

    def client(self, connections: int) -> httpx.AsyncClient:
        """A client for plain HTTP on loopback (no proxies from the environment, no TLS
        context to build)."""
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.url,
            limits=limits,
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            verify=False,
        )

    async def clients(self, stack: contextlib.AsyncExitStack) -> list[httpx.AsyncClient]:
        """The client of each device."""
        if self.shared:
            return [await stack.enter_async_context(self.client(self.n))] * self.n
        return [await stack.enter_async_context(self.client(1)) for _ in range(self.n)]

    async def request(
        self, http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        """One request, retried (up to 3 times, same headers and body) after a transport
        error; an upload's retry keeps its idempotency key."""
        for attempt in range(4):
            try:
                return await http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt == 3:
                    raise BenchmarkError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
                self.counts.retries += 1
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def enroll(self, http: httpx.AsyncClient, index: int) -> SimDevice:
        response = await self.request(
            http, "POST", "/v1/devices", json={"secret": SECRET, "kind": "python"}
        )
        if response.status_code != 201:
            raise BenchmarkError(f"enrollment: {response.status_code} {response.text}")
        body = response.json()
        return SimDevice(index, body["device_id"], body["token"], num_samples=1 + index % 50)

    async def fetch_model(self, http: httpx.AsyncClient, version: int) -> Params:
        """Model ``version`` as the benchmark sees it (not through a device's cache)."""
        response = await self.request(
            http, "GET", f"/v1/models/{version}", headers=self.devices[0].auth
        )
        if response.status_code != 200:
            raise BenchmarkError(f"GET /v1/models/{version}: {response.status_code}")
        got, params, _ = decode_model(response.content)
        if got != version:
            raise BenchmarkError(f"asked for model version {version}, got {got}")
        return params

    async def download(
        self, http: httpx.AsyncClient, device: SimDevice, url: str, etags: dict[str, str]
    ) -> Params:
        headers = dict(device.auth)
        if url in etags:
            headers["If-None-Match"] = f'"{etags[url]}"'
        response = await self.request(http, "GET", url, headers=headers)
        self.counts.downloads += 1
        if response.status_code == 304 and url in etags:
            self.counts.not_modified += 1
            return self.models[etags[url]]
        if response.status_code != 200:
            raise BenchmarkError(f"GET {url}: {response.status_code} {response.text[:200]}")
        etag = response.headers.get("etag", "").strip('"')
        if etag not in self.models:
            self.models[etag] = decode_model(response.content)[1]
        etags[url] = etag
        return self.models[etag]

    async def upload(
        self, http: httpx.AsyncClient, device: SimDevice, task: dict[str, Any], model: Params
    ) -> None:
        update = ClientUpdate(
            client=device.device_id,
            params={name: model[name] + device.delta[name] for name in model},
            num_samples=device.num_samples,
            num_steps=1,
            metrics={"train_loss": 1.0},
        )
        body = encode_update(update, round=task["round"], model_version=task["model_version"])
        headers = {
            **device.auth,
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Type": "application/octet-stream",
        }
        start = time.perf_counter()
        response = await self.request(
            http, "POST", task["upload_url"], content=body, headers=headers
        )
        self.counts.upload_seconds.append(time.perf_counter() - start)
        if response.status_code == 201:
            self.counts.accepted += 1
        elif response.status_code == 200:
            self.counts.duplicates += 1
        elif response.status_code == 409:
            reason = f"409 {response.json().get('error')}"
            self.counts.refused[reason] = self.counts.refused.get(reason, 0) + 1
        else:
            raise BenchmarkError(
                f"upload to {task['upload_url']}: {response.status_code} {response.text[:200]}"
            )

    async def run_device(self, http: httpx.AsyncClient, device: SimDevice) -> None:
        etags: dict[str, str] = {}
        while True:
            response = await self.request(
                http, "POST", "/v1/checkin", params={"wait": LONG_POLL}, headers=device.auth
            )
            self.counts.checkins += 1
            if response.status_code != 200:
                raise BenchmarkError(f"check-in: {response.status_code} {response.text[:200]}")
            answer = response.json()
            if answer["status"] == "finished":
                if self.counts.first_finished is None:
                    self.counts.first_finished = time.time()
                return
            if answer["status"] == "wait":
                self.counts.waits += 1
                await asyncio.sleep(float(answer["retry_after"]))
                continue
            if self.counts.first_task is None:
                self.counts.first_task = time.time()
            model = await self.download(http, device, answer["model_url"], etags)
            await self.upload(http, device, answer, model)

    async def run(self, rounds: int) -> tuple[Params, Params]:
        """Enroll, run every device to the end; ``(model 0, final model)``."""
        async with contextlib.AsyncExitStack() as stack:
            http = await self.clients(stack)
            start = time.perf_counter()
            self.devices = list(
                await asyncio.gather(*(self.enroll(http[k], k) for k in range(self.n)))
            )
            self.enroll_seconds = time.perf_counter() - start
            say(f"{self.n} devices enrolled in {self.enroll_seconds:.1f} s")
            initial = await self.fetch_model(http[0], 0)
            for device in self.devices:
                generator = torch.Generator().manual_seed(device.index)
                device.delta = {
                    name: torch.randn(initial[name].shape, generator=generator) * 0.01
                    for name in sorted(initial)
                }
            try:
                async with asyncio.timeout(self.timeout), asyncio.TaskGroup() as group:
                    for device in self.devices:
                        group.create_task(self.run_device(http[device.index], device))
            except TimeoutError:
                raise BenchmarkError(
                    f"the devices did not finish in {self.timeout:.0f} s"
                ) from None
            except ExceptionGroup as errors:  # the first device's failure, plainly
                first: BaseException = errors
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                if isinstance(first, BenchmarkError):
                    raise first from None
                raise
            final = await self.fetch_model(http[0], rounds)
        return initial, final

    def max_error(self, initial: Params, final: Params, rounds: int) -> float:
        """Largest |w_R − (w_0 + R · Σ n_k δ_k / Σ n_k)|, in float64."""
        total = sum(d.num_samples for d in self.devices)
        worst = 0.0
        for name, w0 in initial.items():
            step = torch.zeros(w0.shape, dtype=torch.float64)
            for device in self.devices:
                step.add_(device.delta[name].double(), alpha=device.num_samples)
            expected = w0.double() + rounds * step / total
            worst = max(worst, float((final[name].double() - expected).abs().max()))
        return worst


def check_database(state: Path, rounds: int, devices: set[str]) -> dict[str, Any]:
    """Rounds 1..R closed, each with one update from each device (read-only)."""
    db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    try:
        closed = db.execute(
            "SELECT number, status, started_at, closed_at FROM rounds ORDER BY number"
        ).fetchall()
        by_round: dict[int, list[str]] = {}
        for number, device in db.execute("SELECT round, device FROM updates ORDER BY seq"):
            by_round.setdefault(number, []).append(device)
        spans = {
            table: {
                number: (first, last)
                for number, first, last in db.execute(
                    f"SELECT round, MIN(at), MAX(at) FROM {table} GROUP BY round"
                )
            }
            for table in ("assignments", "updates")
        }
    finally:
        db.close()
    problems = []
    if [(r[0], r[1]) for r in closed] != [(r, "closed") for r in range(1, rounds + 1)]:
        problems.append(f"rounds table: {[(r[0], r[1]) for r in closed]}")
    for number in range(1, rounds + 1):
        rows = by_round.get(number, [])
        if len(rows) != len(devices) or set(rows) != devices:
            problems.append(
                f"round {number}: {len(rows)} rows from {len(set(rows))} distinct devices, "
                f"{len(set(rows) & devices)} of the {len(devices)} enrolled"
            )
    if problems:
        raise BenchmarkError("server database: " + "; ".join(problems))
    # Where each round's time went, in seconds after its first task (server clock).
    timeline = []
    for number, _, started, closed_at in closed:
        tasks, updates = spans["assignments"][number], spans["updates"][number]
        timeline.append(
            {
                "round": number,
                "last_task": tasks[1] - started,
                "first_update": updates[0] - started,
                "last_update": updates[1] - started,
                "closed": closed_at - started,
            }
        )
    return {
        "rows_per_round": {n: len(by_round[n]) for n in range(1, rounds + 1)},
        "first_task_at": closed[0][2],
        "last_close_at": closed[-1][3],
        "timeline": timeline,
    }


def load_test(
    devices: int, rounds: int, workdir: Path, timeout: float, *, shared: bool
) -> dict[str, Any]:
    """Part 1; returns the results (raises on any failed check)."""
    folder = workdir / "load"
    folder.mkdir(parents=True)
    config = write_toml(folder / "experiment.toml", load_experiment(devices, rounds))
    server = FedgeServer(config, folder / "state", folder)
    cpu_before = time.process_time()
    try:
        url = server.start()
        say(f"load test: fedge server at {url} (log {server.log}); {devices} devices")
        test = LoadTest(url, devices, timeout, shared=shared)
        try:
            initial, final = asyncio.run(test.run(rounds))
        except BenchmarkError as err:
            assert server.proc is not None
            if server.proc.poll() is not None:  # say so when the server is gone
                raise BenchmarkError(
                    f"{err} (fedge server exited with {server.proc.returncode}; log:\n"
                    f"{tail(server.log, 5)})"
                ) from None
            raise
        status = server.status()
        server_peak = server.peak_memory()
        server_cpu = server.cpu_seconds()
    finally:
        server.stop()
    generator_cpu = time.process_time() - cpu_before
    counts = test.counts
    history = [h for h in status["history"] if h["status"] == "closed"]
    ids = {d.device_id for d in test.devices}
    db = check_database(folder / "state", rounds, ids)
    rounds_wall = db["last_close_at"] - db["first_task_at"]
    error = test.max_error(initial, final, rounds)
    ms = [s * 1000 for s in counts.upload_seconds]
    result = {
        "devices": devices,
        "rounds": rounds,
        "http_clients": "one shared (N connections)" if shared else "one per device",
        "accepted_updates": counts.accepted,
        "updates_per_second": counts.accepted / rounds_wall,
        "rounds_wall_seconds": rounds_wall,
        "round_seconds": [h["seconds"] for h in history],
        "upload_ms": {
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "max": max(ms),
        },
        "enroll_seconds": test.enroll_seconds,
        "server_peak_mb": server_peak / MB,
        "server_cpu_seconds": server_cpu,
        "load_generator_cpu_seconds": generator_cpu,
        "max_abs_error": error,
        "exact": error <= TOLERANCE,
        "database": db,
        "counts": {k: v for k, v in asdict(counts).items() if k != "upload_seconds"},
        "server_history": status["history"],
    }
    # A duplicate (200) can only answer a retry after a transport error: still one update.
    if counts.accepted + counts.duplicates != devices * rounds or counts.refused:
        raise BenchmarkError(
            f"{counts.accepted} updates accepted and {counts.duplicates} duplicates "
            f"(expected {devices * rounds} in all), refused: {counts.refused}"
        )
    return result


def print_load(r: dict[str, Any]) -> None:
    verdict = "exact" if r["exact"] else "NOT EXACT"
    print(
        f"load: {r['devices']} devices x {r['rounds']} rounds: "
        f"{r['updates_per_second']:.0f} updates/s, upload p50 {r['upload_ms']['p50']:.0f} ms "
        f"p99 {r['upload_ms']['p99']:.0f} ms, server peak {r['server_peak_mb']:.0f} MB, "
        f"{verdict} (max |Δw| {r['max_abs_error']:.1e})",
        flush=True,
    )
    rounds = ", ".join(f"{s:.2f}" for s in r["round_seconds"])
    c = r["counts"]
    print(
        f"  rounds (server: first task -> close) {rounds} s; first task -> last close "
        f"{r['rounds_wall_seconds']:.2f} s; enrollment {r['enroll_seconds']:.1f} s; "
        f"CPU: server {r['server_cpu_seconds']:.1f} s, load generator "
        f"{r['load_generator_cpu_seconds']:.1f} s; {c['checkins']} check-ins "
        f"({c['waits']} waits), {c['downloads']} downloads ({c['not_modified']} 304), "
        f"{c['retries']} retries",
        flush=True,
    )
    steps = "; ".join(
        f"round {t['round']}: last task {t['last_task']:.2f} s, updates "
        f"{t['first_update']:.2f}-{t['last_update']:.2f} s, closed {t['closed']:.2f} s"
        for t in r["database"]["timeline"]
    )
    print(f"  after each round's first task: {steps}", flush=True)


# --- part 2: real client processes and Flower --------------------------------------------


def start_clients(
    url: str, config: Path, clients: int, folder: Path
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "FEDGE_ENROLLMENT_SECRET": SECRET,
    }
    procs, states = [], []
    for k in range(clients):
        state = folder / f"client-{k}"
        cmd = [
            sys.executable, "-m", "fedge", "client", "--server", url, "--config", str(config),
            "--partition", str(k), "--state", str(state), "--quiet", "--max-backoff", "0.5",
        ]  # fmt: skip
        with (folder / f"client-{k}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            )
        states.append(state)
    return procs, states


def wait_until(
    done: Callable[[], bool],
    procs: list[subprocess.Popen[bytes]],
    folder: Path,
    timeout: float,
    what: str,
    server: FedgeServer | None = None,
) -> None:
    """Poll ``done()`` until true; fail as soon as a client exits with an error or the
    server exits, and on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for k, proc in enumerate(procs):
            code = proc.poll()
            if code not in (None, 0):
                raise BenchmarkError(
                    f"client {k} exited with {code}:\n{tail(folder / f'client-{k}.log')}"
                )
        if server is not None and server.proc is not None and server.proc.poll() is not None:
            raise BenchmarkError(
                f"fedge server exited with {server.proc.returncode}:\n{tail(server.log)}"
            )
        if done():
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def fedge_real(clients: int, rounds: int, workdir: Path, timeout: float) -> dict[str, Any]:
    """Part 2, fedge's side."""
    folder = workdir / "real"
    folder.mkdir(parents=True)
    config = write_toml(folder / "experiment.toml", real_experiment(clients, rounds))
    port = free_port()
    server = FedgeServer(config, folder / "state", folder, port=port)
    sampler = MemorySampler()
    procs: list[subprocess.Popen[bytes]] = []
    launch = time.perf_counter()
    try:
        procs, states = start_clients(f"http://{HOST}:{port}", config, clients, folder)
        sampler.watch("clients", [p.pid for p in procs])
        sampler.start()
        say(f"real clients: {clients} fedge client processes loading their data")
        wait_until(
            lambda: all(s.is_dir() for s in states), procs, folder, timeout, "clients to load"
        )
        clients_ready = time.perf_counter() - launch
        server.start()
        sampler.watch("server", [server.pid])
        server_ready = time.perf_counter() - launch
        say(
            f"clients ready after {clients_ready:.1f} s, server at {server.url} after "
            f"{server_ready:.1f} s; {rounds} rounds"
        )
        wait_until(
            lambda: all(p.poll() is not None for p in procs),
            procs,
            folder,
            timeout,
            "the clients to finish",
            server,
        )
        wall = time.perf_counter() - launch
        sampler.sample()
        status = server.status()
        server_peak = server.peak_memory()
        server_cpu = server.cpu_seconds()
    finally:
        sampler.stop()
        for proc in procs:
            stop_process(proc, grace=5)
        server.stop()
    history = [h for h in status["history"] if h["status"] == "closed"]
    if len(history) != rounds or not status["finished"]:
        raise BenchmarkError(f"{len(history)} of {rounds} rounds closed: {status['history']}")
    seconds = [h["seconds"] for h in history]
    return {
        "framework": "fedge",
        "clients": clients,
        "rounds": rounds,
        "seconds_per_round": seconds,
        "median_seconds_per_round": statistics.median(seconds),
        "clients_ready_seconds": clients_ready,
        "server_ready_seconds": server_ready,
        "wall_seconds": wall,
        "server_peak_mb": server_peak / MB,
        "server_sampled_peak_rss_mb": sampler.peak["server"] / MB,
        "server_cpu_seconds": server_cpu,
        "clients_peak_rss_mb": sampler.peak["clients"] / MB,
        "clients_hwm_sum_mb": sampler.hwm_sum("clients") / MB,
        "participants": [h["participants"] for h in history],
        "train_loss": [h.get("train_loss") for h in history],
    }


def flower_real(clients: int, rounds: int, workdir: Path, timeout: float) -> dict[str, Any]:
    """Part 2, Flower's side: ``peers/flower_deploy.py`` in its virtual environment."""
    out, log = workdir / "flower.json", workdir / "flower.log"
    cmd = [
        sys.executable, str(FLOWER_DEPLOY), "--clients", str(clients), "--rounds", str(rounds),
        "--epochs", "1", "--batch-size", "32", "--lr", "0.01", "--momentum", "0",
        "--threads", "1", "--timeout", str(timeout), "--out", str(out),
    ]  # fmt: skip
    say(f"flower: {clients} SuperNodes, {rounds} rounds (log {log})")
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        # flower_deploy bounds its own run by --timeout (rounds) and its start-up timeout;
        # this bound is for installing the venv on first use as well.
        code = proc.wait(timeout=2 * timeout + 1200)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_process(proc, grace=30)  # SIGTERM: flower_deploy stops its own processes
    if code != 0 or not out.is_file():
        raise BenchmarkError(f"flower_deploy.py failed ({code}):\n{tail(log)}")
    return dict(json.loads(out.read_text()))


def print_real(fedge: dict[str, Any], flower: dict[str, Any] | None) -> dict[str, float]:
    per_round = ", ".join(f"{s:.2f}" for s in fedge["seconds_per_round"])
    print(
        f"real fedge: {fedge['clients']} clients x {fedge['rounds']} rounds: "
        f"{fedge['median_seconds_per_round']:.2f} s/round (median of {per_round}), "
        f"server peak {fedge['server_peak_mb']:.0f} MB, clients peak "
        f"{fedge['clients_peak_rss_mb']:.0f} MB "
        f"(sum of VmHWM {fedge['clients_hwm_sum_mb']:.0f} MB)",
        flush=True,
    )
    if flower is None:
        return {}
    per_round = ", ".join(f"{s:.2f}" for s in flower["seconds_per_round"])
    print(
        f"real flower: {flower['clients']} clients x {flower['rounds']} rounds: "
        f"{flower['median_seconds_per_round']:.2f} s/round (median of {per_round}), "
        f"server peak {flower['server_peak_rss_mb']:.0f} MB, clients peak "
        f"{flower['clients_peak_rss_mb']:.0f} MB",
        flush=True,
    )
    ratios = {
        "seconds_per_round": flower["median_seconds_per_round"] / fedge["median_seconds_per_round"],
        "server_memory": flower["server_peak_rss_mb"] / fedge["server_peak_mb"],
        "clients_memory": flower["clients_peak_rss_mb"] / fedge["clients_peak_rss_mb"],
    }
    print(
        f"flower / fedge: {ratios['seconds_per_round']:.2f}x seconds per round, "
        f"{ratios['server_memory']:.2f}x server memory, "
        f"{ratios['clients_memory']:.2f}x clients memory",
        flush=True,
    )
    return ratios


# --- main --------------------------------------------------------------------------------


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that every process started here is stopped."""
    sys.exit(128 + signum)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=500, help="simulated devices (0: skip)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the load test")
    p.add_argument(
        "--real-clients", type=int, default=20, help="fedge client processes (0: skip part 2)"
    )
    p.add_argument("--real-rounds", type=int, default=2, help="rounds with real clients")
    p.add_argument("--skip-flower", action="store_true", help="no Flower run in part 2")
    p.add_argument(
        "--shared-client",
        action="store_true",
        help="part 1: all devices share one httpx.AsyncClient with N connections (its pool "
        "scans every connection for every request: CPU here grows as N squared)",
    )
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument(
        "--timeout", type=float, default=3600, help="seconds for each part's rounds (bound)"
    )
    p.add_argument(
        "--workdir", type=Path, help="keep configs, state and logs here (default: a temp dir)"
    )
    args = p.parse_args()
    if args.devices < 0 or args.real_clients < 0 or args.rounds < 1 or args.real_rounds < 1:
        p.error("--devices and --real-clients must be >= 0, --rounds and --real-rounds >= 1")
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
    }
    failed = False
    with scratch(args.workdir, prefix="fedge-load-") as workdir:
        say(f"scratch and logs: {workdir}")
        try:
            if args.devices:
                results["load"] = load_test(
                    args.devices, args.rounds, workdir, args.timeout, shared=args.shared_client
                )
                print_load(results["load"])
                failed = not results["load"]["exact"]
            if args.real_clients:
                fedge = fedge_real(args.real_clients, args.real_rounds, workdir, args.timeout)
                results["real"] = {"fedge": fedge}
                flower = None
                if not args.skip_flower:
                    flower = flower_real(args.real_clients, args.real_rounds, workdir, args.timeout)
                    results["real"]["flower"] = flower
                results["real"]["ratios_flower_over_fedge"] = print_real(fedge, flower)
        except BenchmarkError as err:
            say(f"error: {err}")
            say(f"logs kept in {workdir}")
            raise SystemExit(1) from None
        finally:
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1) + "\n")
        if failed:
            say(f"the final model is not the expected one (tolerance {TOLERANCE})")
            say(f"logs kept in {workdir}")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
