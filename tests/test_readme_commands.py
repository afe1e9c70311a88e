"""Every shell command in the README runs as written, or is parsed by fedge's CLI for a
stated reason.

The README's ```bash blocks are read command by command (continuation lines joined, a
heredoc kept with its command, comments dropped). :func:`test_readme_block_runs` runs each
block in a fresh folder that links to ``examples/``, in order, as a user types it: a
``fedge`` command in this process (the CLI with the same argv), ``fedge serve``,
``fedge server``, ``fedge client`` and lines ending in ``&`` as processes (each in its own
terminal; a server listens on a free port that replaces the README's in later lines),
other lines (heredocs, ``curl``, ``python``, ``export``) with bash. Long runs get the extra
``--set`` arguments of :data:`SHORTER`. A command that cannot run on a test machine (it
needs the internet, S3, a phone, several machines, a certificate) is listed in
:data:`PARSED_ONLY` with the reason and is parsed by the CLI without running. So a command
added to the README runs in the test of its block unless it is listed there.

The set-up commands (``apt-get ... && pip install ...``) are checked in
``tests/test_readme.py`` (CI runs the test one, ``.ci/run``); the demo's ``fedge`` part
runs here. The benchmark synopses (``python benchmarks/NAME.py [--option value]``) are
parsed by each script's argparse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import runpy
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fedge.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block of ``text``."""
    return [_commands(b) for b in re.findall(r"^ *```bash\n(.*?)^ *```", text, re.S | re.M)]


def _commands(block: str) -> list[str]:
    lines = [line.strip() for line in block.splitlines()]
    out, i = [], 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if not line:
            continue
        while line.endswith("\\"):
            line, i = line[:-1].rstrip() + " " + lines[i], i + 1
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc.group(1), i)
            line, i = "\n".join([line, *lines[i:end], heredoc.group(1)]), end + 1
        else:
            line = re.sub(r"\s+#.*$", "", line)
        out.append(line)
    return out


BLOCKS = bash_blocks(README)
COMMANDS = [c for block in BLOCKS for c in block]
SETUP = [c for c in COMMANDS if c.startswith("apt-get update")]
#: The set-up line's last step, the demo.
DEMO = next(c for c in SETUP if "fedge simulate" in c).split(" && ")[-1]

#: Extra arguments that shorten a long command when it runs in a test.
SHORTER: dict[str, str] = {
    "fedge simulate examples/fmnist_demo.toml --out runs/demo --force": "--set rounds=1",
    "fedge simulate examples/niid_fmnist.toml": (
        "--set rounds=1 --set client.epochs=1 --set model.preset=logreg"
    ),
    "fedge simulate examples/digits_quick.toml --set rounds=20 --set client.lr=0.1 --out runs/d": (
        "--set rounds=2"
    ),
    "fedge simulate examples/digits_quick.toml --set engine=ray --set ray_workers=2": (
        "--set rounds=1"
    ),
    "fedge simulate examples/synthetic_fedprox.toml": "--set rounds=2",
    "fedge simulate examples/robustness_fmnist.toml --set attack.kind=sign_flip "
    "--set 'strategy.aggregator={name = \"median\"}'": "--set rounds=1 --set model.preset=logreg",
    "fedge simulate examples/digits_quick.toml --set privacy.clip_norm=1.0 "
    "--set privacy.noise_multiplier=1.0 --set privacy.target_epsilon=20": "--set rounds=2",
    "fedge simulate examples/digits_secagg.toml": "--set rounds=1",
    "fedge server examples/digits_deploy.toml --state runs/fed-server": "--set rounds=1",
    "fedge train job.toml --out runs/t --register fmnist-lenet": (
        "--set train.epochs=1 --set model.preset=logreg"
    ),
    "fedge train job.toml --out runs/t --workers 2 --force": (
        "--set train.epochs=1 --set model.preset=logreg"
    ),
    "fedge compare examples/compare_fmnist.toml --out runs/compare-fmnist": (
        "--set budget.epochs=1 --set model.preset=logreg"
    ),
    "fedge data upload canv --set data.name=canvases --set data.num_train=1000 "
    "--set data.num_test=100 --set data.size=64 --set data.max_items=3": (
        "--set data.num_train=200 --set data.num_test=20"
    ),
    "fedge train detector.toml --out runs/det --register detector": "--set train.epochs=1",
    "fedge simulate examples/canvases_fedavg.toml --out runs/det-fl": (
        "--set rounds=1 --set data.num_train=90 --set data.num_test=10 "
        "--set partition.num_clients=3"
    ),
}

#: Commands parsed by the CLI but not run, and why.
PARSED_ONLY: dict[str, str] = {
    "fedge data download fashion-mnist --dest data/fashion-mnist": "downloads from the internet",
    "export FEDGE_ENROLLMENT_SECRET=...": "a placeholder for the user's secret",
    "fedge server fed.toml --host 0.0.0.0 --port 8443 --tls-cert cert.pem --tls-key key.pem "
    "--state /var/lib/fedge": "needs a certificate and the user's experiment file",
    "fedge client --server https://fl.example.org:8443 --data mine.npz": (
        "needs a server on the network and the device's own data"
    ),
    "fedge server examples/digits_deploy.toml --host 0.0.0.0 --port 8443 --tls-cert cert.pem "
    "--tls-key key.pem --state runs/fed-server": "needs a certificate and a phone to join",
    "fedge server examples/digits_deploy.toml --host 0.0.0.0 --port 8080 --allow-http "
    "--state runs/fed-server": (
        "listens on the network for a phone (the /client page runs in "
        "tests/federation/test_browser_client.py)"
    ),
    "fedge train job.toml --out runs/t --resume": (
        "needs an interrupted job (tests/central/test_train.py interrupts and resumes one)"
    ),
    "MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 WORLD_SIZE=4 RANK=0 fedge train job.toml "
    "--out runs/t": "needs four workers on two machines",
    "torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint "
    "10.0.0.1:29500 --no-python fedge train job.toml --out runs/t": "needs two machines",
    "fedge models list --store s3://my-bucket/fedge": "needs an S3 bucket",
    "fedge tokens revoke 3f9c0a1b2d4e": "a placeholder for an id that `fedge tokens list` shows",
    "export FEDGE_PUBLISHER_KEY=<printed key>": (
        "a placeholder for the key that `fedge models keygen` prints"
    ),
}


def _fmnist_job(folder: Path) -> None:
    """The job file the README shows below its training commands, and a device's new
    samples (``new.npz``: ten test images, shaped and scaled like the dataset's)."""
    (toml,) = [b for b in re.findall(r"```toml\n(.*?)```", README, re.S) if "fmnist-lenet" in b]
    (folder / "job.toml").write_text(toml)
    from fedge.config import FashionMNISTData
    from fedge.data.load import load_data

    test = load_data(FashionMNISTData(name="fashion_mnist"), seed=0).test
    np.savez(folder / "new.npz", x=test.x[:10].numpy(), y=test.y[:10].numpy())


_RUNS_D = (
    "fedge simulate examples/digits_quick.toml --set rounds=20 --set client.lr=0.1 --out runs/d"
)

#: What a block needs from earlier sections (README commands, run the same way, or
#: functions of the folder), by the block's first command.
BEFORE: dict[str, list[str | Callable[[Path], None]]] = {
    "fedge data upload fmnist --set data.name=fashion_mnist": [_fmnist_job],
    "fedge models register digits runs/d --data-version digits": [_RUNS_D],
    "fedge serve --port 8000": [
        _RUNS_D,
        "python examples/digits_samples.py",
        "fedge data upload digits --set data.name=digits",
        "fedge models register digits runs/d --data-version digits",
        "fedge models promote digits 1",
    ],
}


def fedge_argv(command: str) -> list[str] | None:
    """The arguments after ``fedge`` in ``command`` (behind ``VAR=value`` prefixes or
    ``torchrun ... --no-python``), or ``None`` when it does not run fedge."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if words[:1] == ["torchrun"]:
        words = words[words.index("--no-python") + 1 :]
    return words[1:] if words[:1] == ["fedge"] else None


#: The CLI's usage error (typer may bundle its own copy of click).
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def parse(argv: list[str]) -> None:
    """Parse a fedge command line as the CLI does, down to its subcommand, without running
    it; raises :data:`UsageError` on an unknown command, option or bad value."""
    try:
        ctx = typer.main.get_command(app).make_context("fedge", list(argv))
        while hasattr(ctx.command, "resolve_command"):
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                break
            name, sub, rest = ctx.command.resolve_command(ctx, rest)
            ctx = sub.make_context(name, rest, parent=ctx)
    except typer.Exit as done:  # --help and --version stop the parse, successfully
        if done.exit_code != 0:
            raise


class Shell:
    """A user's terminals in ``folder``: the environment they export, the servers and
    clients they leave running."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env: dict[str, str | None] = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "FEDGE_EDGE_CACHE": str(folder / ".edge-cache"),
            "RAY_USAGE_STATS_ENABLED": "0",
            **dict.fromkeys(
                ["FEDGE_STORE", "FEDGE_SERVER", "FEDGE_TOKEN", "FEDGE_ENROLLMENT_SECRET"]
            ),
        }
        self.ports: dict[str, str] = {}  # README port -> the port a server got
        self.serve_url: str | None = None
        self.servers: list[tuple[subprocess.Popen, Path]] = []
        self.clients: list[tuple[subprocess.Popen, Path]] = []

    def _full_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        return {k: v for k, v in env.items() if v is not None}

    def _localized(self, command: str) -> str:
        for readme, port in self.ports.items():
            command = re.sub(rf"(?<=:){readme}\b", port, command)
        return command

    def run(self, readme_command: str) -> None:
        if readme_command in PARSED_ONLY:
            argv = fedge_argv(readme_command)
            if argv is not None:
                parse(argv)
            return
        command = self._localized(readme_command)
        background = command.endswith("&")
        command = command.removesuffix("&").rstrip()
        argv = fedge_argv(command)
        extra = shlex.split(SHORTER.get(readme_command, ""))
        if argv is not None and (background or argv[:1] in (["serve"], ["server"], ["client"])):
            self._start(argv + extra, readme_command)
        elif background:
            raise AssertionError(f"only fedge runs in the background here: {command}")
        elif argv is not None:
            self._fedge(argv + extra)
            promoted = re.fullmatch(r"models promote (\S+) (\d+)", " ".join(argv))
            if promoted and self.serve_url is not None:
                self._wait_until_served(*promoted.groups())
        elif command.startswith("export "):
            name = command.split()[1].split("=")[0]
            self.env[name] = self._bash(f'{command} && printf %s "${name}"')
        else:
            said = self._bash(command)
            if command.startswith("curl "):
                answer = json.loads(said)
                assert "error" not in answer, f"{command}: {answer}"

    def _fedge(self, argv: list[str]) -> None:
        result = CliRunner().invoke(app, argv, env=self.env)
        assert result.exit_code == 0, f"fedge {shlex.join(argv)}:\n{result.output}"

    def _bash(self, command: str) -> str:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self._full_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def _start(self, argv: list[str], readme_command: str) -> None:
        """A command in its own terminal; a server gets a free port and is waited for."""
        is_server = argv[0] in ("serve", "server")
        readme_port = None
        if is_server:
            readme_port = "8000" if argv[0] == "serve" else "8080"
            if "--port" in argv:
                i = argv.index("--port") + 1
                readme_port, argv = argv[i], [*argv[:i], "0", *argv[i + 1 :]]
            else:
                argv = [*argv, "--port", "0"]
        log = self.folder / f".{len(self.servers) + len(self.clients)}-{argv[0]}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedge", *argv],
            cwd=self.folder,
            env=self._full_env(),
            stdout=subprocess.PIPE if is_server else log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not is_server:
            self.clients.append((proc, log))
            return
        self.servers.append((proc, log))
        url = _listening_url(proc, log, readme_command)
        self.ports[readme_port] = url.rsplit(":", 1)[1]
        if argv[0] == "serve":
            self.serve_url = url
            _wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, log)

    def _wait_until_served(self, model: str, version: str) -> None:
        def served() -> bool:
            return httpx.get(f"{self.serve_url}/v2/models/{model}").json()["version"] == version

        _wait_for(served, self.servers[-1][1])

    def close(self) -> None:
        """Wait for the clients to finish (they stop when the federation has), then stop
        the servers."""
        try:
            for proc, log in self.clients:
                try:
                    code = proc.wait(timeout=240)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = "timeout"
                assert code == 0, f"{shlex.join(proc.args)} ended with {code}:\n{log.read_text()}"
        finally:
            for proc, _ in self.clients + self.servers:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)


def _listening_url(proc: subprocess.Popen, log: Path, command: str) -> str:
    """The URL a server prints once it listens; the rest of its output goes to ``log``."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        with log.open("w") as out:
            for line in proc.stdout:
                lines.put(line)
                out.write(line)
                out.flush()
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            line = lines.get(timeout=1)
            if line is None:
                break
            if "listening on" in line:
                return line.split()[-1]
    raise AssertionError(f"{command} did not start:\n{log.read_text()}")


def _wait_for(condition: Callable[[], bool], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            if condition():
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out; server log:\n{log.read_text()}")


RUN = [b for b in BLOCKS if any(c not in PARSED_ONLY and c not in SETUP for c in b)]


@pytest.mark.readme
@pytest.mark.parametrize("block", RUN, ids=[b[0].split("\n")[0][:60] for b in RUN])
def test_readme_block_runs(block, tmp_path, monkeypatch):
    """The block's commands, in order, in a fresh folder with fedge's examples."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    shell = Shell(tmp_path)
    try:
        for step in BEFORE.get(block[0], []):
            step(tmp_path) if callable(step) else shell.run(step)
        for command in block:
            shell.run(command)
    finally:
        shell.close()


@pytest.mark.readme
def test_the_demo_runs_after_the_install(tmp_path, monkeypatch):
    """The install line ends with the demo, a fedge command."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    Shell(tmp_path).run(DEMO)
    assert (tmp_path / "runs" / "demo" / "summary.json").is_file()


FEDGE = [c for c in [*COMMANDS, DEMO] if c not in SETUP and fedge_argv(c) is not None]


@pytest.mark.parametrize("command", FEDGE, ids=[c[:70] for c in FEDGE])
def test_every_readme_fedge_command_parses(command):
    parse(fedge_argv(command))


def test_a_wrong_option_does_not_parse():
    """The dry parse catches what a user would get as a usage error."""
    parse(["simulate", "examples/digits_quick.toml", "--set", "rounds=1"])
    for argv in (
        ["simulate", "x.toml", "--rounds", "3"],
        ["model", "list"],
        ["serve", "--port", "x"],
    ):
        with pytest.raises(UsageError):
            parse(argv)


def test_parsed_only_and_shorter_name_readme_commands():
    """No stale entries: each names a command the README still has."""
    known = [*COMMANDS, DEMO]
    stale = [c for c in [*PARSED_ONLY, *SHORTER, *BEFORE, *_prerequisites()] if c not in known]
    assert not stale, f"not in the README: {stale}"
    assert all(reason.strip() for reason in PARSED_ONLY.values())


def _prerequisites() -> list[str]:
    return [s for steps in BEFORE.values() for s in steps if isinstance(s, str)]


def test_every_readme_command_is_run_or_parsed_for_a_reason():
    """A command is run by its block's test unless PARSED_ONLY gives a reason; no block
    is left out of the runs, and the extraction found the README's commands."""
    assert len(COMMANDS) >= 50 and len(SETUP) == 2
    run = {c for b in RUN for c in b if c not in PARSED_ONLY}
    assert set(COMMANDS) == run | set(PARSED_ONLY) | set(SETUP)


def test_commands_are_read_whole():
    """Continuation lines are joined, heredocs kept, comments dropped."""
    block = "fedge a \\\n    --b 1   # note\ncat > f <<'T'\nx = 1 # kept\nT\nfedge c\n"
    assert _commands(block) == ["fedge a --b 1", "cat > f <<'T'\nx = 1 # kept\nT", "fedge c"]


#: The README's benchmark synopses, ``python benchmarks/NAME.py [--option value] ...``:
#: benchmarks run by hand for minutes to hours, so each is parsed by its script's argparse
#: with every option the synopsis shows.
BENCHMARKS = [" ".join(m.split()) for m in re.findall(r"`(python benchmarks/[^`]+)`", README)]


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("synopsis", BENCHMARKS, ids=[b.split()[1] for b in BENCHMARKS])
def test_every_readme_benchmark_synopsis_parses(synopsis, monkeypatch):
    _, script, *options = shlex.split(synopsis.replace("[", " ").replace("]", " "))
    assert "argparse" in (ROOT / script).read_text(), f"{script} parses no options"
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        parse_args(self, options)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [script, *options])
    monkeypatch.syspath_prepend(str((ROOT / script).parent))  # as `python script` does
    with pytest.raises(_Parsed):
        runpy.run_path(str(ROOT / script), run_name="__main__")


def test_the_benchmark_synopses_are_found():
    assert len(BENCHMARKS) >= 9
    assert any("--strategies fedavg fedprox" in b for b in BENCHMARKS)
