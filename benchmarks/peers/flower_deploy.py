"""Flower's deployment runtime as a reference for fedge's server: a SuperLink and N
SuperNodes as separate processes on loopback (not ``run_simulation``), FedAvg of the
LeNet-style CNN on an IID split of Fashion-MNIST, timed per round.

    ~/.cache/fedge-bench/venv-flower/bin/python benchmarks/peers/flower_deploy.py \\
        --clients 10 --rounds 3 --epochs 1 --batch-size 32 --lr 0.01 --out result.json

Started with an interpreter that lacks ``flwr`` (the project's own), the script first gets
the ``flower`` virtual environment from ``benchmarks/vs_peers.py``'s ``ensure_venv``
(created under ``--venvs`` on first use) and re-executes itself there.

What runs (flwr 1.42; every API is HTTP on 127.0.0.1, ports picked free, no TLS):

* ``flower-superlink --insecure --host 127.0.0.1 --port P`` (Fleet, Control and Runtime
  APIs on one port), which starts ``flower-superexec``, which starts one
  ``flwr-serverapp`` process for the run;
* per client i: ``flower-supernode --insecure --superlink 127.0.0.1:P --host 127.0.0.1
  --port Q_i --node-config "partition-id=i num-partitions=N"``, which starts its own
  ``flower-superexec``, which starts one ``flwr-clientapp`` process per message, i.e. per
  round (that process imports torch, unpacks the app and reads its partition each time);
* ``flwr run flower_deploy_app/ fedge-bench --run-config ... --stream``, the submission,
  with the SuperLink connection ``fedge-bench`` in ``$FLWR_HOME/config.toml`` (flwr 1.42
  keeps connections there, no longer in the app's ``[tool.flwr.federations]``).

The app (``flower_deploy_app/fedge_deploy_app.py``) trains with ``peer_common``'s CNN and
local SGD; see its docstring. Every Flower process gets ``PYTHONPATH`` = this folder (for
``peer_common``), the venv's ``bin`` first on ``PATH`` (the SuperLink and SuperNodes start
``flower-superexec`` by name), ``FLWR_TELEMETRY_ENABLED=0``, and its own ``FLWR_HOME`` in
a scratch folder (one for the SuperLink and the CLI, one per SuperNode, as on separate
machines). Runtime dependency installation (``uv sync`` of the app) is off.

Measured:

* ``seconds_per_round``: from the ServerApp's own stamps, entering ``configure_train`` to
  leaving ``aggregate_train`` (send, ClientApp start-up + data + training on every node,
  replies, averaging); process start-up and waiting for the SuperNodes are not in it.
  Flower's own polling is: a SuperNode with nothing to do asks the SuperLink again after
  3 s, its SuperExec looks for tasks every 1 s, the ServerApp looks for replies every 3 s;
* ``clientapp_seconds``: per round, mean and max over the ClientApps of how long the
  process had been alive when ``train`` was called (``startup-s``), loading the partition
  (``load-s``) and training (``train-s``);
* ``wall_seconds``: launching the SuperLink to the ServerApp's last stamp (``done``);
  ``startup_seconds``: launching the SuperLink to all N SuperNodes being connected;
* peak memory, summed RSS sampled every 0.2 s from ``/proc``: ``server_peak_rss_mb``, the
  SuperLink's process tree (``flower-superlink``, its ``flower-superexec`` and the
  ``flwr-serverapp``); ``clients_peak_rss_mb``, all SuperNodes' trees together
  (``flower-supernode``, ``flower-superexec``, the ``flwr-clientapp`` processes). Summed
  RSS counts shared pages (torch's libraries) once per process, so it overstates what the
  machine loses; ``machine_used_memory_growth_peak_mb`` is the largest growth of
  ``MemTotal - MemAvailable`` since the start (anything else running counts too);
* per program (``server_processes``, ``client_processes``): how many processes ran, the
  largest RSS of one, and their CPU seconds together (``fork of X``: a child seen before
  it exec'd; ``?``: one whose command line could not be read; ``file``, ``uname``: run by
  Python's ``platform`` module). The ``flwr run`` CLI (the "user's workstation") is in
  neither side.

Every process started here is in its own session; on success, error, timeout, SIGTERM or
Ctrl-C the script signals those sessions and every process it has seen in their trees
(TERM, then KILL after 5 s). ``--max-memory-mb`` (default 12 GiB) aborts the run when the
machine's used memory has grown by more than that. Progress goes to stderr; the result is
one JSON object in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "flower_deploy_app"
CONNECTION = "fedge-bench"
HOST = "127.0.0.1"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
MB = 2**20
FLOWER_PROGRAMS = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
)


def say(msg: str) -> None:
    print(f"[flower-deploy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class RunError(RuntimeError):
    """The run failed; the message says why."""


# --- start-up: the right interpreter -----------------------------------------------------


def ensure_flower_python(venvs: Path) -> None:
    """Re-execute this script in the ``flower`` virtual environment unless ``flwr`` is
    importable here (``ensure_venv`` creates the venv on first use)."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(HERE.parent))
        from vs_peers import ensure_venv  # needs the project's environment (fedge)

        with contextlib.redirect_stdout(sys.stderr):  # stdout stays free for callers
            python, _ = ensure_venv("flower", venvs)
        if python is None:
            sys.exit("error: could not install the flower virtual environment")
        say(f"re-running under {python}")
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


# --- processes ---------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class Started:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    logfile: IO[bytes]


@dataclass
class ProcInfo:
    ppid: int
    sid: int  # session id
    start: int  # clock ticks after boot: with the pid, identifies the process
    rss: int  # bytes
    cpu_ticks: int  # user + system time, in clock ticks


def used_memory() -> int:
    """The machine's used memory in bytes: ``MemTotal - MemAvailable``."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def scan_proc() -> dict[int, ProcInfo]:
    """Parent, session, start time, RSS and CPU time of every process, from
    ``/proc/PID/stat``."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry.name)] = ProcInfo(
            ppid=int(fields[1]),
            sid=int(fields[3]),
            start=int(fields[19]),
            rss=int(fields[21]) * PAGE,
            cpu_ticks=int(fields[11]) + int(fields[12]),
        )
    return table


def descendants(table: dict[int, ProcInfo], roots: list[int]) -> set[int]:
    """``roots`` (those alive) and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found, stack = set(), [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def program(pid: int) -> str:
    """Which Flower program a process runs (the console script in its command line), or
    its executable's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [Path(a.decode(errors="replace")).name for a in argv if a]
    for name in names[:3]:
        if name in FLOWER_PROGRAMS:
            return name
    return names[0] if names else "?"


@dataclass
class Seen:
    """One process of a side: its program (re-read every sample, since a child shows its
    parent's command line until it has exec'd), largest RSS and CPU time so far."""

    name: str = "?"
    peak_rss: int = 0
    cpu_ticks: int = 0


@dataclass
class Side:
    """Peak summed RSS of one side's processes, and each process seen."""

    peak: int = 0
    procs: dict[tuple[int, int], Seen] = field(default_factory=dict)

    def add(self, pids: set[int], table: dict[int, ProcInfo]) -> int:
        """Account one sample of ``pids``; their summed RSS."""
        total = 0
        for pid in pids:
            info = table[pid]
            seen = self.procs.setdefault((pid, info.start), Seen())
            name = program(pid)
            parent = table.get(info.ppid)
            if parent is not None:
                above = self.procs.get((info.ppid, parent.start))
                if above is not None and above.name == name:
                    name = f"fork of {name}"  # a child that has not exec'd (yet)
            if name != "?":
                seen.name = name
            seen.peak_rss = max(seen.peak_rss, info.rss)
            seen.cpu_ticks = max(seen.cpu_ticks, info.cpu_ticks)
            total += info.rss
        self.peak = max(self.peak, total)
        return total

    def programs(self) -> dict[str, dict[str, Any]]:
        """Per program: how many processes ran, the largest RSS of one of them and
        their CPU time together (user + system, as of each one's last sample)."""
        out: dict[str, dict[str, Any]] = {}
        for seen in self.procs.values():
            if seen.name == "?" and seen.peak_rss == 0:
                continue  # exited before its command line could be read
            entry = out.setdefault(seen.name, {"processes": 0, "peak_rss_mb": 0.0, "cpu_s": 0.0})
            entry["processes"] += 1
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], round(seen.peak_rss / MB, 1))
            entry["cpu_s"] += seen.cpu_ticks / TICKS
        for entry in out.values():
            entry["cpu_s"] = round(entry["cpu_s"], 1)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))


class Cluster:
    """The SuperLink, the SuperNodes and the CLI: started, watched and stopped."""

    def __init__(self, workdir: Path, max_memory: int) -> None:
        self.workdir = workdir
        self.max_memory = max_memory
        self.baseline_used = used_memory()
        self.used_peak = 0  # largest growth of the machine's used memory
        self.bin = Path(sys.prefix) / "bin"
        self.started: list[Started] = []
        self.superlink: Started | None = None
        self.supernodes: list[Started] = []
        self.seen: set[tuple[int, int]] = set()  # (pid, start) of every process in a tree
        self.server, self.clients = Side(), Side()
        self.total_peak = 0
        self.over_memory: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    def env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, name: str, argv: list[str], home: Path) -> Started:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        logfile = log.open("wb")
        popen = subprocess.Popen(
            [str(self.bin / argv[0]), *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=self.env(home),
            cwd=self.workdir,
            start_new_session=True,
        )
        proc = Started(name, popen, log, logfile)
        self.started.append(proc)
        return proc

    # memory sampling -------------------------------------------------------------------

    def start_sampling(self) -> None:
        self._sampler.start()

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        table = scan_proc()
        link = self.superlink
        nodes = list(self.supernodes)
        with self._lock:
            server = descendants(table, [link.popen.pid] if link else [])
            clients = descendants(table, [p.popen.pid for p in nodes]) - server
            self.seen.update((pid, table[pid].start) for pid in server | clients)
            total = self.server.add(server, table) + self.clients.add(clients, table)
            self.total_peak = max(self.total_peak, total)
            grown = used_memory() - self.baseline_used
            self.used_peak = max(self.used_peak, grown)
            if grown > self.max_memory and self.over_memory is None:
                self.over_memory = (
                    f"the machine's used memory grew by {grown / MB:.0f} MB > "
                    f"--max-memory-mb {self.max_memory / MB:.0f}"
                )

    # checks ----------------------------------------------------------------------------

    def check(self) -> None:
        """``RunError`` if memory ran over or a SuperLink or SuperNode has exited."""
        if self.over_memory:
            raise RunError(self.over_memory)
        for proc in [self.superlink, *self.supernodes]:
            if proc is not None and proc.popen.poll() is not None:
                raise RunError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{tail(proc.log)}"
                )

    def wait_port(self, proc: Started, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            self.check()
            if time.monotonic() > deadline:
                raise RunError(f"{proc.name} did not open port {port} in {timeout:.0f} s")
            time.sleep(0.2)

    # stopping --------------------------------------------------------------------------

    def _alive_targets(self) -> set[tuple[int, int]]:
        """Processes to end: members of the sessions started here, descendants of the
        started processes not yet reaped, and every process seen in the trees, each
        while its pid still has the start time it had."""
        table = scan_proc()
        sessions = {p.popen.pid for p in self.started}
        roots = [p.popen.pid for p in self.started if p.popen.poll() is None]
        with self._lock:
            self.seen.update((pid, i.start) for pid, i in table.items() if i.sid in sessions)
            self.seen.update((pid, table[pid].start) for pid in descendants(table, roots))
            seen = set(self.seen)
        return {
            (pid, start)
            for pid, start in seen
            if pid != os.getpid() and pid in table and table[pid].start == start
        }

    def stop(self) -> None:
        """TERM every process started here or seen in their trees, KILL what is left
        after 5 s, and reap."""
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(timeout=2)
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            targets = self._alive_targets()
            if not targets:
                break
            for pid, _ in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self._alive_targets() and time.monotonic() < deadline:
                time.sleep(0.1)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=2)
            proc.logfile.close()


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the run -----------------------------------------------------------------------------


def write_flower_config(home: Path, port: int) -> None:
    """The CLI's SuperLink connection (``$FLWR_HOME/config.toml``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{HOST}:{port}"\ninsecure = true\n'
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))  # a line being written is skipped
    return events


def run_config(args: argparse.Namespace, timing: Path) -> list[str]:
    """``--run-config`` options, one per key, values in TOML syntax."""
    values: dict[str, Any] = {
        "num-server-rounds": args.rounds,
        "num-clients": args.clients,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch-size": args.batch_size,
        "lr": float(args.lr),
        "momentum": float(args.momentum),
        "threads": args.threads,
        "node-wait-seconds": float(args.startup_timeout),
        "round-timeout-seconds": float(args.timeout),
        "timing-file": str(timing),
    }
    out = []
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        out += ["--run-config", f"{key}={text}"]
    return out


def follow(
    cluster: Cluster, cli: Started, timing: Path, rounds: int, deadline: float
) -> list[dict[str, Any]]:
    """Print the ServerApp's events as they come until ``done``; ``RunError`` on an
    ``error`` event, a dead process, the CLI exiting first or the deadline."""
    shown = 0
    while True:
        events = read_events(timing)
        for ev in events[shown:]:
            if ev["event"] == "nodes-ready":
                say(f"ServerApp: all {ev['nodes']} SuperNodes connected")
            elif ev["event"] == "round":
                parts = ", ".join(
                    f"{key} {v['mean']:.1f} (max {v['max']:.1f})"
                    for key, v in ev["clientapp"].items()
                )
                say(
                    f"round {ev['round']}/{rounds}: {ev['end'] - ev['start']:.2f} s "
                    f"({ev['replies']} replies, {ev['errors']} errors; ClientApp s: {parts})"
                )
            elif ev["event"] == "error":
                raise RunError(f"the ServerApp failed:\n{ev['traceback']}")
        shown = len(events)
        if any(ev["event"] == "done" for ev in events):
            return events
        cluster.check()
        if cli.popen.poll() is not None:
            time.sleep(1)  # the last line may still be on its way
            if not any(ev["event"] == "done" for ev in read_events(timing)):
                raise RunError(
                    f"flwr run exited ({cli.popen.returncode}) before the ServerApp "
                    f"finished:\n{tail(cli.log)}"
                )
        if time.monotonic() > deadline:
            raise RunError("timed out waiting for the ServerApp")
        time.sleep(0.25)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import flwr
    import torch

    cluster = Cluster(workdir, max_memory=args.max_memory_mb * MB)
    timing = workdir / "serverapp-events.jsonl"
    server_home = workdir / "home-superlink"
    link_port, *node_ports = free_ports(1 + args.clients)
    write_flower_config(server_home, link_port)
    t_launch = time.time()
    try:
        cluster.start_sampling()
        say(f"starting the SuperLink on {HOST}:{link_port}")
        cluster.superlink = cluster.start(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host", HOST,
                "--port", str(link_port),
                "--disable-runtime-dependency-installation",
            ],
            server_home,
        )  # fmt: skip
        cluster.wait_port(cluster.superlink, link_port, args.startup_timeout)
        say(
            f"SuperLink up after {time.time() - t_launch:.1f} s; starting {args.clients} SuperNodes"
        )
        for i, port in enumerate(node_ports):
            node = cluster.start(
                f"supernode-{i}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink", f"{HOST}:{link_port}",
                    "--host", HOST,
                    "--port", str(port),
                    "--node-config", f"partition-id={i} num-partitions={args.clients}",
                ],
                workdir / f"home-supernode-{i}",
            )  # fmt: skip
            cluster.supernodes.append(node)
        for node, port in zip(cluster.supernodes, node_ports, strict=True):
            cluster.wait_port(node, port, args.startup_timeout)
        say(f"SuperNodes up after {time.time() - t_launch:.1f} s; submitting the app")
        cli = cluster.start(
            "flwr-run",
            ["flwr", "run", str(APP_DIR), CONNECTION, *run_config(args, timing), "--stream"],
            server_home,
        )
        deadline = time.monotonic() + args.startup_timeout + args.timeout
        events = follow(cluster, cli, timing, args.rounds, deadline)
        cluster.sample()
    finally:
        say("stopping every Flower process")
        cluster.stop()

    rounds = [ev for ev in events if ev["event"] == "round"]
    errors = sum(ev["errors"] for ev in rounds)
    if len(rounds) != args.rounds or errors:
        raise RunError(f"{len(rounds)} of {args.rounds} rounds, {errors} error replies")
    seconds = [round(ev["end"] - ev["start"], 3) for ev in rounds]
    ready = next(ev["t"] for ev in events if ev["event"] == "nodes-ready")
    done = next(ev["t"] for ev in events if ev["event"] == "done")
    return {
        "framework": "flower-deployment",
        "flwr_version": flwr.__version__,
        "torch_version": torch.__version__,
        "clients": args.clients,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "seed": args.seed,
        "threads_per_clientapp": args.threads,
        "cpus": os.cpu_count(),
        "seconds_per_round": seconds,
        "median_seconds_per_round": round(statistics.median(seconds), 3),
        "rounds_seconds": round(rounds[-1]["end"] - rounds[0]["start"], 3),
        "clientapp_seconds": [
            {
                key: {k: round(v, 3) for k, v in stats.items()}
                for key, stats in ev["clientapp"].items()
            }
            for ev in rounds
        ],
        "startup_seconds": round(ready - t_launch, 3),
        "wall_seconds": round(done - t_launch, 3),
        "server_peak_rss_mb": round(cluster.server.peak / MB, 1),
        "clients_peak_rss_mb": round(cluster.clients.peak / MB, 1),
        "total_peak_rss_mb": round(cluster.total_peak / MB, 1),
        "machine_used_memory_growth_peak_mb": round(cluster.used_peak / MB, 1),
        "server_side": (
            "process tree of flower-superlink: flower-superlink + flower-superexec + "
            "flwr-serverapp (summed RSS)"
        ),
        "client_side": (
            "process trees of all flower-supernode: flower-supernode + flower-superexec + "
            "flwr-clientapp, one per message (summed RSS)"
        ),
        "server_processes": cluster.server.programs(),
        "client_processes": cluster.clients.programs(),
        "transport": "HTTP on 127.0.0.1, insecure (no TLS)",
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10, help="SuperNodes (= partitions)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="partition and initial weights")
    p.add_argument("--threads", type=int, default=1, help="torch threads per ClientApp")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument(
        "--timeout", type=float, default=3600, help="seconds for all rounds (and per round)"
    )
    p.add_argument(
        "--startup-timeout", type=float, default=180, help="seconds for processes to come up"
    )
    p.add_argument(
        "--max-memory-mb",
        type=int,
        default=12288,
        help="abort when the machine's used memory has grown by more than this",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep logs and scratch here (default: a temp dir, removed after a successful run)",
    )
    p.add_argument(
        "--venvs",
        type=Path,
        default=Path.home() / ".cache" / "fedge-bench",
        help="where vs_peers.py keeps the peers' virtual environments",
    )
    args = p.parse_args()
    if args.clients < 1 or args.rounds < 1:
        p.error("--clients and --rounds must be at least 1")
    return args


@contextlib.contextmanager
def scratch(workdir: Path | None, prefix: str = "fedge-flower-deploy-") -> Iterator[Path]:
    """``workdir`` (kept), or a temporary folder removed unless the run fails (also used
    by ``benchmarks/load.py``)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    yield path  # an exception skips the removal: the logs stay for a look
    shutil.rmtree(path, ignore_errors=True)


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (e.g. a caller's timeout) unwinds like Ctrl-C, so that cleanup runs."""
    say("terminated (SIGTERM)")
    sys.exit(128 + signum)


def main() -> None:
    args = parse_args()
    ensure_flower_python(args.venvs)
    signal.signal(signal.SIGTERM, on_sigterm)
    with scratch(args.workdir) as workdir:
        say(f"scratch and logs: {workdir}")
        try:
            result = run(args, workdir)
        except RunError as err:
            say(f"error: {err}")
            say(f"logs kept in {workdir / 'logs'}")
            raise SystemExit(1) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    say(
        f"{args.clients} clients, {args.rounds} rounds: median "
        f"{result['median_seconds_per_round']} s/round, server peak "
        f"{result['server_peak_rss_mb']} MB, clients peak {result['clients_peak_rss_mb']} MB; "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
