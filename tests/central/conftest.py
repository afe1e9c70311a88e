"""Fixtures for the central pipeline: a real S3 API server (moto, over HTTP on loopback)
and a ``store`` fixture that runs each test once per backend."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import boto3
import httpx
import pytest

from fedge.central.storage import LocalStore, open_store

# moto checks If-None-Match and then writes without a lock, so on its default threaded
# server two concurrent conditional puts can both succeed, where S3 lets exactly one win.
# A single-threaded server handles one request at a time, which gives that guarantee;
# the clients in the tests still race each other.
_SERVER = """
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

server = make_server(
    "127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False
)
print(server.server_port, flush=True)
server.serve_forever()
"""


def _wait_until_answers(url, proc, log, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """URL of a moto S3 server started for this test session."""
    # The server logs every request: to a file, as a pipe nobody reads would fill and
    # block it.
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        port = int(proc.stdout.readline() or 0)
        if not port:
            raise RuntimeError(f"moto server did not start: {log.read_text()}")
        url = f"http://127.0.0.1:{port}"
        _wait_until_answers(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.fixture
def aws_env(monkeypatch, s3_endpoint):
    """Test credentials, no user AWS configuration, and FEDGE_S3_ENDPOINT set."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "FEDGE_S3_ENDPOINT": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    return s3_endpoint


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint):
    """A boto3 client of the moto server, for setting up and inspecting buckets."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(aws_env, s3_admin):
    """A fresh, empty bucket on the moto server."""
    name = f"fedge-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty store, once a folder and once a prefix of a bucket on a real S3 API."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/some/prefix")


@pytest.fixture
def free_port():
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: A fedge command with PyTorch made unimportable: ``fedge serve`` answers with onnxruntime
#: and NumPy only, and the edge app runs on devices without torch.
WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("this fedge command must not import torch (" + name + ")")

sys.meta_path.insert(0, NoTorch())
from fedge.cli.main import app
app(prog_name="fedge")
"""


@pytest.fixture(scope="session")
def without_torch():
    """:data:`WITHOUT_TORCH`: ``[sys.executable, "-c", without_torch, *fedge_args]`` runs
    a fedge command in a fresh interpreter where importing torch fails."""
    return WITHOUT_TORCH


@contextlib.contextmanager
def running_server(store_dir, *args, log):
    """`fedge serve --port 0` on a store, as a subprocess without PyTorch
    (:data:`WITHOUT_TORCH`); yields its URL once ready."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", WITHOUT_TORCH, "serve", "--port", "0"]
            + ["--store", str(store_dir)]
            + [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line}{log.read_text()}")
        url = line.split()[-1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server not ready: {log.read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.fixture(scope="session")
def serve_process():
    """:func:`running_server`, for tests and module-scoped fixtures."""
    return running_server
