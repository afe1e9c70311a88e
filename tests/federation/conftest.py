"""Real federation servers (``fedge server`` as a subprocess on loopback) and the
experiment files they run."""

import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tomli_w

SECRET = "correct-horse-battery-staple"


def experiment(name="deploy-test", rounds=3, strategy=None, **deploy):
    """A tiny digits experiment for 3 devices (all of them in every round)."""
    return {
        "name": name,
        "seed": 0,
        "rounds": rounds,
        "engine": "sequential",
        "data": {"name": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 3, "beta": 0.5},
        "model": {"preset": "mlp", "hidden": [16]},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.1, "momentum": 0.5},
        "strategy": strategy or {"name": "fedavg"},
        "deploy": {
            "enrollment_secret": SECRET,
            "deadline_seconds": 120.0,
            "min_poll_seconds": 0.05,
            "max_poll_seconds": 0.5,
            **deploy,
        },
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


class ServerProcess:
    """``fedge server CONFIG --port 0 --state DIR``; restartable on the same state."""

    def __init__(self, config: Path, state: Path, log: Path, *args: str):
        self.config, self.state, self.log, self.args = config, state, log, args
        self.proc: subprocess.Popen | None = None
        self.url = ""
        # Trust the server's own certificate when it has one.
        self.verify = True
        if "--tls-cert" in args:
            self.verify = ssl.create_default_context(cafile=args[args.index("--tls-cert") + 1])

    def start(self, port: int = 0) -> str:
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedge",
                    "server",
                    str(self.config),
                    "--port",
                    str(port),
                    "--state",
                    str(self.state),
                    *self.args,
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            if "listening on" in line:
                self.url = line.split()[-1]
                break
        else:
            raise RuntimeError(f"server did not start: {self.log.read_text()}")
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{self.url}/v1/health", timeout=2, verify=self.verify)
                if health.status_code == 200:
                    return self.url
            time.sleep(0.05)
        raise RuntimeError(f"server not live: {self.log.read_text()}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()

    def status(self) -> dict:
        return httpx.get(f"{self.url}/v1/status", timeout=10, verify=self.verify).json()


@pytest.fixture
def federation(tmp_path):
    """Start servers with ``federation(config_dict)``; all are stopped after the test."""
    started = []

    def start(data: dict, *args: str) -> ServerProcess:
        config = write_config(tmp_path / f"{data['name']}.toml", data)
        server = ServerProcess(config, tmp_path / "state", tmp_path / "server.log", *args)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def records(state: Path) -> dict:
    """Every row of every table of a server's SQLite state, and its tensor files."""
    db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        db.close()
    files = sorted(
        (str(p.relative_to(state)), p.read_bytes())
        for p in (state / "tensors").rglob("*")
        if p.is_file()
    )
    return {"rows": rows, "files": files}


def make_devices(server, tmp_path, config):
    """In-process devices, one per partition of ``config``, stepped by the test (no long
    polls: a check-in answers at once, so each step is one decision of the server)."""
    from fedge.data.load import load_data, partition_data
    from fedge.federation.client import ClientSettings, FederatedClient

    data = load_data(config.data, seed=config.seed)
    parts = partition_data(data, config.partition, seed=config.seed)
    settings = ClientSettings(backoff=0.05, max_backoff=0.5, timeout=30, long_poll=0)
    return [
        FederatedClient(
            server.url,
            tmp_path / f"device{k}",
            data.train.x[rows],
            data.train.y[rows],
            rng_id=k,
            secret=SECRET,
            settings=settings,
            log=lambda message: None,
        )
        for k, rows in enumerate(parts)
    ]


def finish(device, turns=200):
    """Step a device until it does something other than wait (a round closes a moment
    after its last upload); returns that status."""
    for _ in range(turns):
        status, wait = device.step()
        if status != "wait":
            return status
        time.sleep(min(wait, 0.1))
    return status


def round_records(state: Path) -> dict[int, dict]:
    """Each ended round's status and metrics as the server committed them."""
    db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT number, status, metrics FROM rounds WHERE status != 'open'")
        return {n: {"status": s, **json.loads(m)} for n, s, m in rows.fetchall()}
    finally:
        db.close()


def start_clients(
    server, state_root: Path, *args: str, count: int = 3, files=None, envs=None
) -> list:
    """``fedge client`` processes on partitions 0..count-1 of the server's experiment;
    ``files`` maps a partition to an ``.npz`` the device reads instead (``--data``),
    ``envs`` a partition to extra environment variables."""
    procs = []
    for k in range(count):
        env = {**os.environ, "FEDGE_ENROLLMENT_SECRET": SECRET, **(envs or {}).get(k, {})}
        if files and k in files:
            data = ["--data", str(files[k]), "--rng-id", str(k)]
        else:
            data = ["--config", str(server.config), "--partition", str(k)]
        command = [sys.executable, "-m", "fedge", "client", "--server", server.url, *data]
        command += ["--state", str(state_root / f"d{k}"), "--quiet", *args]
        procs.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def wait_for_clients(clients: list, timeout: float = 240) -> None:
    """Wait for client processes to end; each must succeed."""
    try:
        for client in clients:
            out, _ = client.communicate(timeout=timeout)
            assert client.returncode == 0, out
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()


def task_fields(**extra):
    """The fields of a plain task of round 1 (``fedge.federation.protocol.Task``), with
    ``extra`` added: for tests of what a device makes of a task."""
    training = {
        "epochs": 1,
        "batch_size": 8,
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "drop_last": False,
    }
    return {
        "round": 1,
        "model_version": 0,
        "training_round": 1,
        "model_url": "/v1/models/0",
        "upload_url": "/v1/rounds/1/updates",
        "deadline_seconds": None,
        "seed": 0,
        "num_devices": 3,
        "training": training,
        "strategy": {"name": "fedavg"},
        "spec": {},
        **extra,
    }
