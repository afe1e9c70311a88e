"""Flower's SecAgg+ as a peer baseline for fedge's secure aggregation: the cost of one
round of ``SecAggPlusWorkflow`` / ``secaggplus_mod`` against one round of plain FedAvg on
the same cohort, per client and on the server.

    ~/.cache/fedge-bench/venv-flower/bin/python benchmarks/peers/flower_secagg.py \\
        --clients 100 --dropout 0.3 --params 44426 --out result.json

Started with an interpreter that lacks ``flwr`` (the project's own), the script gets the
``flower`` virtual environment from ``benchmarks/vs_peers.py``'s ``ensure_venv`` and
re-executes itself there, as ``flower_deploy.py`` does.

What runs (flwr 1.42, everything of Flower's that takes part in the protocol is Flower's
own code): the server side is what the ServerApp of Flower's secure-aggregation example
does, ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with a ``LegacyContext``
holding the legacy ``FedAvg`` strategy (every client every round, no evaluation, initial
parameters zeros); the plain baseline is the same with Flower's ``default_fit_workflow``.
Each client is a ``ClientApp(client_fn, mods=[secaggplus_mod])`` (no mod for the
baseline) whose ``NumPyClient.fit`` returns one float32 tensor of ``--params`` values drawn
uniformly from [-1, 1] (seeded by ``--seed`` and the client's index) and reports
``--num-examples`` examples, so that the weighted average is the plain mean.

The transport is this script's ``DirectGrid``, a ``flwr.serverapp.Grid`` standing in for
the SuperLink and N SuperNodes in one process: every message is deflated into the objects
that flwr 1.42 sends over the wire (``get_all_nested_objects`` + ``deflate``: the Message
with its metadata, the RecordDict, each record, each Array and its ArrayChunks), rebuilt
from those bytes on the other side (``inflate_object_from_contents``), handled at once by
the destination node's ClientApp with the node's own persistent ``Context`` (as a
SuperNode keeps it), and the reply travels back the same way. The clients run one after
the other. Flower's simulation engine (``run_simulation``) is not used on purpose: its
in-memory SuperLink looks up each node's next message by scanning every stored message
(``InMemoryLinkState.get_message_ins``), and the engine repeats that for every node every
0.1 s; one such sweep with 1000 nodes and 1000 pending messages took 3.4 CPU seconds
here, so at n = 1000 the engine's polling alone keeps a core busy and would swamp the
server's and clients' costs (and the Ray backend splits the work over processes).

Dropouts: ``round(dropout * n)`` clients, drawn with ``--seed``, go offline when the
message of ``--drop-stage`` reaches them (default ``collect_masked_vectors``, i.e. after
the key sharing, before uploading their masked vector; the plain round drops the same
clients at their fit message). Their ClientApp never sees that message and they answer
nothing afterwards; the grid replies in their place with the error that Flower's own
SuperLink produces for a node whose heartbeat has lapsed
(``create_message_error_unavailable_res_message(..., "node_unavail")``,
``ErrorCode.NODE_UNAVAILABLE``). A real SuperLink sends that reply only after
``HEARTBEAT_PATIENCE`` (2) x the node's heartbeat interval (30 s by default), so with the
workflow's default ``timeout=None`` a deployment would wait about a minute in the stage
where clients drop; that wait is not in the numbers (Flower's own example instead lets a
client sleep past ``timeout=15``). The workflow treats an error reply as a dropout. In
flwr 1.42 it then completes and unmasks the right sum when the clients drop at
``collect_masked_vectors`` or ``unmask`` (see ``completed`` and the error against the
exact mean), but it halts without an aggregate when any client, even one, drops at
``setup`` or ``share_keys``: each surviving neighbour raises a ``KeyError`` in the unmask
stage, looking up the key share that the dead client never sent it, and the server, which
wants t shares of every sampled client, logs "Not enough shares to recover secret". A
ClientApp that raises is answered with ``ErrorCode.CLIENT_APP_RAISED_EXCEPTION``, as a
SuperNode does.

SecAgg+ parameters: ``num_shares`` k = the smallest odd number >= 2 log2 n (at most n;
Flower's ring needs odd k: each client shares with its k - 1 ring neighbours and keeps
one share): 15 for n = 100, 19 for 500, 21 for 1000. ``reconstruction_threshold`` t =
max(2, k // 3): 5, 6, 7. Flower's docs recommend no values (its example uses 3 and 2);
t must stay below the number of survivors in every client's neighbourhood, and with 30 %
of the clients dropping at random a majority threshold (t = k // 2 + 1) is not: by
Monte Carlo over the ring, t = 8 of k = 15 fails for 67 % of the drop sets at n = 100,
t = 10 of k = 19 for 97 % at n = 500 and t = 11 of k = 21 for > 99 % at n = 1000, while
k // 3 fails for 1-2.5 %. When it fails, Flower logs "Insufficient available nodes" and
halts the round without an aggregate. Both can be set (``--num-shares``,
``--threshold``). ``clipping_range`` 8.0, ``quantization_range`` 2**22 and ``max_weight``
1000 are Flower's defaults, ``modulus_range`` 2**32.

Measured per arm (``secaggplus``, ``plain``) for the one round (the fit workflow; the
DefaultWorkflow's set-up, with no messages, is outside):

* bytes sent / received per client: the sum over the client's messages of the lengths of
  the deflated wire objects above (no gRPC / HTTP framing, no TLS); a dropped client sends
  nothing from its drop stage on. Means over the survivors (the full protocol) and over
  the dropped clients, and per stage;
* client CPU seconds: ``time.process_time`` around the ClientApp call (mods + ``fit``;
  Flower's Shamir code runs in worker threads, which process time includes; nothing else
  runs meanwhile), summed over the client's messages, mean and max over the survivors;
  (de)serialization is counted apart as ``transport_cpu_seconds``;
* server CPU seconds: the process CPU of the round minus the clients' and the transport's
  (the workflow, the strategy, the client manager's thread);
* ``wall_seconds``: the round in this harness, clients one after the other;
  ``round_seconds_clients_in_parallel``: the same with each stage's clients overlapped,
  i.e. the wall time minus every client's handling time plus the slowest client's of
  each stage (what a round with all clients on their own machines and a free network
  would take);
* ``aggregate_max_abs_error``: the largest difference between the round's new global
  parameters and the exact mean (float64) of the vectors in the sum: the survivors', or
  every client's when they drop at ``unmask``, after uploading.

CPU times are per process and hold on a busy machine; wall times grow with whatever else
runs on it.

``expansion_factor`` is SecAgg+'s bytes sent per surviving client over plain FedAvg's
(``expansion_factor_received`` the same for bytes received). The result is one JSON object,
written to ``--out`` and stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from uuid import uuid4

HERE = Path(__file__).resolve().parent
VENVS = Path.home() / ".cache" / "fedge-bench"


def say(msg: str) -> None:
    print(f"[flower-secagg {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_flower_python() -> None:
    """Re-execute this script in the ``flower`` virtual environment (under ``--venvs``;
    ``ensure_venv`` creates it on first use) unless ``flwr`` is importable here."""
    if importlib.util.find_spec("flwr") is not None:
        return
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--venvs", type=Path, default=VENVS)
    venvs = p.parse_known_args()[0].venvs
    sys.path.insert(0, str(HERE.parent))
    from vs_peers import ensure_venv  # needs the project's environment (fedge)

    with contextlib.redirect_stdout(sys.stderr):  # stdout stays free for the result
        python, _ = ensure_venv("flower", venvs)
    if python is None:
        sys.exit("error: could not install the flower virtual environment")
    say(f"re-running under {python}")
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    ensure_flower_python()  # before the imports of flwr below

import flwr  # noqa: E402
import numpy as np  # noqa: E402
from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.app.user_config import UserConfig  # noqa: E402
from flwr.client import Client, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters  # noqa: E402
from flwr.common.constant import (  # noqa: E402
    NODE_ID_NUM_BYTES,
    SUPERLINK_NODE_ID,
    ErrorCode,
)
from flwr.common.secure_aggregation.secaggplus_constants import (  # noqa: E402
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.compat.server.typing import Workflow  # noqa: E402
from flwr.server import LegacyContext, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.superlink.linkstate.utils import (  # noqa: E402
    create_message_error_unavailable_res_message,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD  # noqa: E402
from flwr.server.workflow.default_workflows import default_fit_workflow  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import (  # noqa: E402
    inflate_object_from_contents,
)
from flwr.supercore.run import Run  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

PLAIN_STAGE = "fit"


# --- the cohort ----------------------------------------------------------------------------


def default_num_shares(clients: int) -> int:
    """The smallest odd number >= 2 log2 n, at most n."""
    k = math.ceil(2 * math.log2(clients))
    return min(clients, k + 1 - k % 2)


def default_threshold(num_shares: int) -> int:
    return max(2, num_shares // 3)


def dropped_clients(clients: int, dropout: float, seed: int) -> set[int]:
    """The indices of the ``round(dropout * clients)`` clients that drop out."""
    return set(random.Random(seed).sample(range(clients), round(dropout * clients)))


def client_vector(seed: int, client: int, params: int) -> NDArray[np.float32]:
    """The float32 vector that client ``client`` uploads: uniform in [-1, 1]."""
    rng = np.random.default_rng([seed, client])
    return rng.uniform(-1.0, 1.0, params).astype(np.float32)


# --- the client ----------------------------------------------------------------------------


class VectorClient(NumPyClient):
    """``fit`` returns the client's vector and ``num-examples``."""

    def __init__(self, client: int, run_config: UserConfig) -> None:
        self.client = client
        self.seed = int(cast(int, run_config["seed"]))
        self.params = int(cast(int, run_config["params"]))
        self.examples = int(cast(int, run_config["num-examples"]))

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        return [client_vector(self.seed, self.client, self.params)], self.examples, {}


def client_fn(context: Context) -> Client:
    client = int(cast(int, context.node_config["partition-id"]))
    return VectorClient(client, context.run_config).to_client()


# --- the transport -------------------------------------------------------------------------


@dataclass
class Delivery:
    """One message to a client."""

    client: int
    stage: str
    received: int  # bytes (0 when the client had dropped out)
    sent: int  # bytes (0 when the client had dropped out)
    cpu: float  # process CPU seconds of the ClientApp call
    wall: float  # seconds of the ClientApp call


def stage_of(msg: Message) -> str:
    """The SecAgg+ stage a server message starts, or ``fit`` for a plain fit message."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return PLAIN_STAGE if configs is None else str(configs[Key.STAGE])


def transmit(msg: Message) -> tuple[Message, int]:
    """``msg`` as its receiver gets it, rebuilt from flwr 1.42's wire objects, and the
    number of bytes of those objects."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    size = sum(len(content) for content in contents.values())
    copy = cast(Message, inflate_object_from_contents(msg.object_id, contents))
    copy.metadata.__dict__["_message_id"] = msg.metadata.message_id
    return copy, size


class DirectGrid(Grid):
    """The SuperLink and the SuperNodes in this process: each message goes through
    ``transmit`` to its node's ClientApp at once, and the reply comes back the same way.
    Node ``node_ids[i]`` is client i, with a persistent Context as a SuperNode keeps it;
    the clients in ``dropped`` go offline when a message of ``drop_stage`` reaches them."""

    def __init__(
        self,
        app: ClientApp,
        run: Run,
        node_ids: list[int],
        run_config: UserConfig,
        dropped: set[int],
        drop_stage: str,
        label: str,
    ) -> None:
        self._run = run
        self.app, self.dropped, self.drop_stage, self.label = app, dropped, drop_stage, label
        self.client_of = {node_id: i for i, node_id in enumerate(node_ids)}
        self.contexts = {
            node_id: Context(
                run_id=run.run_id,
                node_id=node_id,
                node_config={"partition-id": i, "num-partitions": len(node_ids)},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, node_id in enumerate(node_ids)
        }
        self.offline: set[int] = set()
        self.replies: dict[str, Message] = {}
        self.deliveries: list[Delivery] = []
        self.transport_cpu = 0.0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self.replies[msg.metadata.message_id] = self.deliver(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Every reply, at once (``timeout`` never applies)."""
        start = time.perf_counter()
        replies = list(self.pull_messages(self.push_messages(messages)))
        stage = self.deliveries[-1].stage if self.deliveries else "-"
        errors = sum(reply.has_error() for reply in replies)
        say(
            f"{self.label}: {len(replies)} replies to {stage} ({errors} errors) in "
            f"{time.perf_counter() - start:.1f} s"
        )
        return replies

    def deliver(self, msg: Message) -> Message:
        """The reply to ``msg``: its node's, or the SuperLink's error for a node gone."""
        node_id = msg.metadata.dst_node_id
        client, stage = self.client_of[node_id], stage_of(msg)
        if node_id in self.offline or (client in self.dropped and stage == self.drop_stage):
            self.offline.add(node_id)
            self.deliveries.append(Delivery(client, stage, 0, 0, 0.0, 0.0))
            return create_message_error_unavailable_res_message(msg.metadata, "node_unavail")
        cpu0 = time.process_time()
        received, size_in = transmit(msg)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        try:
            reply = self.app(received, self.contexts[node_id])
        except Exception as ex:  # a SuperNode reports a failing ClientApp this way
            reason = f"{type(ex).__name__}: {ex}"
            say(f"{self.label}: client {client} raised in {stage}: {reason}")
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=code, reason=reason), reply_to=received)
        cpu2, wall2 = time.process_time(), time.perf_counter()
        sent, size_out = transmit(reply)
        self.transport_cpu += (cpu1 - cpu0) + (time.process_time() - cpu2)
        self.deliveries.append(
            Delivery(client, stage, size_in, size_out, cpu2 - cpu1, wall2 - wall1)
        )
        return sent


# --- one arm -------------------------------------------------------------------------------


class TimedWorkflow:
    """A fit workflow, timed (wall and process CPU seconds), and whether it produced new
    global parameters."""

    def __init__(self, inner: Workflow) -> None:
        self.inner = inner
        self.wall = self.cpu = 0.0
        self.completed = False

    def __call__(self, grid: Grid, context: Context) -> None:
        before = context.state.array_records[MAIN_PARAMS_RECORD]
        wall, cpu = time.perf_counter(), time.process_time()
        self.inner(grid, context)
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.completed = context.state.array_records[MAIN_PARAMS_RECORD] is not before


def secaggplus_workflow(args: argparse.Namespace) -> SecAggPlusWorkflow:
    """Flower's defaults but for ``num_shares``, ``reconstruction_threshold`` and the
    modulus."""
    return SecAggPlusWorkflow(
        num_shares=args.num_shares,
        reconstruction_threshold=args.threshold,
        modulus_range=2**32,
    )


def mean(values: Iterable[float], digits: int = 6) -> float | None:
    values = list(values)
    return round(statistics.fmean(values), digits) if values else None


def run_arm(secagg: bool, args: argparse.Namespace, dropped: set[int]) -> dict[str, object]:
    """One round of SecAgg+ (``secagg``) or of plain FedAvg, and what it cost."""
    label = "secaggplus" if secagg else "plain"
    n = args.clients
    random.seed(args.seed)  # Flower's ring order (random.shuffle)
    np.random.seed(args.seed)  # Flower's stochastic rounding (np.random.rand)
    ids = random.Random(args.seed).sample(
        range(SUPERLINK_NODE_ID + 1, 2 ** (8 * NODE_ID_NUM_BYTES - 1)), n
    )
    run = Run.create_empty(run_id=random.Random(args.seed).getrandbits(63))
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id  # as run_simulation sets them
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = DirectGrid(
        ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else []),
        run,
        ids,
        {"seed": args.seed, "params": args.params, "num-examples": args.num_examples},
        dropped,
        args.drop_stage if secagg else PLAIN_STAGE,
        label,
    )
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([np.zeros(args.params, np.float32)]),
    )
    context = LegacyContext(
        Context(run.run_id, SUPERLINK_NODE_ID, {}, RecordDict(), {}),
        config=ServerConfig(num_rounds=1),
        strategy=strategy,
    )
    fit = TimedWorkflow(secaggplus_workflow(args) if secagg else default_fit_workflow)
    DefaultWorkflow(fit_workflow=fit)(grid, context)

    survivors = [i for i in range(n) if i not in dropped]
    # clients that drop in the unmask stage have uploaded their masked vectors
    summed = range(n) if secagg and args.drop_stage == Stage.UNMASK else survivors
    error = None
    if fit.completed:
        (aggregate,) = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        exact = np.mean(
            [client_vector(args.seed, i, args.params) for i in summed], axis=0, dtype=np.float64
        )
        error = float(np.max(np.abs(aggregate.astype(np.float64) - exact)))

    sent, received, cpu = [0] * n, [0] * n, [0.0] * n
    for d in grid.deliveries:
        sent[d.client] += d.sent
        received[d.client] += d.received
        cpu[d.client] += d.cpu
    gone = sorted(dropped)
    stages = {}
    for stage in Stage.all() if secagg else (PLAIN_STAGE,):
        ds = [d for d in grid.deliveries if d.stage == stage and d.client not in dropped]
        stages[stage] = {
            "survivor_messages": len(ds),
            "bytes_sent_mean": mean((d.sent for d in ds), 1),
            "bytes_received_mean": mean((d.received for d in ds), 1),
            "client_cpu_seconds_mean": mean(d.cpu for d in ds),
            "client_cpu_seconds_max": round(max((d.cpu for d in ds), default=0.0), 6),
        }
    slowest = sum(
        max((d.wall for d in grid.deliveries if d.stage == stage), default=0.0) for stage in stages
    )
    return {
        "completed": fit.completed,
        "survivors": len(survivors),
        "bytes_sent_per_client": mean((sent[i] for i in survivors), 1),
        "bytes_received_per_client": mean((received[i] for i in survivors), 1),
        "bytes_sent_per_dropped_client": mean((sent[i] for i in gone), 1),
        "bytes_received_per_dropped_client": mean((received[i] for i in gone), 1),
        "client_cpu_seconds_per_client": mean(cpu[i] for i in survivors),
        "client_cpu_seconds_max": round(max((cpu[i] for i in survivors), default=0.0), 6),
        "clients_cpu_seconds_total": round(sum(cpu), 3),
        "server_cpu_seconds": round(fit.cpu - sum(cpu) - grid.transport_cpu, 3),
        "transport_cpu_seconds": round(grid.transport_cpu, 3),
        "wall_seconds": round(fit.wall, 3),
        "round_seconds_clients_in_parallel": round(
            fit.wall - sum(d.wall for d in grid.deliveries) + slowest, 3
        ),
        "aggregate_max_abs_error": error,
        "stages": stages,
    }


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.0, help="fraction of clients dropping")
    p.add_argument(
        "--params",
        type=int,
        default=44426,
        help="float32 values per client (default: LeNet's count)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--num-examples", type=int, default=600, help="every client's FitRes num_examples"
    )
    p.add_argument("--num-shares", type=int, help="default: the smallest odd >= 2 log2 n")
    p.add_argument("--threshold", type=int, help="reconstruction threshold; default k // 3")
    p.add_argument(
        "--drop-stage",
        choices=Stage.all(),
        default=Stage.COLLECT_MASKED_VECTORS,
        help="the SecAgg+ stage whose message the dropping clients never answer",
    )
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument(
        "--venvs", type=Path, default=VENVS, help="where vs_peers.py keeps the peers' venvs"
    )
    args = p.parse_args()
    if args.clients < 3 or args.params < 1 or not 0 <= args.dropout < 1:
        p.error("need --clients >= 3, --params >= 1 and 0 <= --dropout < 1")
    if args.num_shares is None:
        args.num_shares = default_num_shares(args.clients)
    if args.threshold is None:
        args.threshold = default_threshold(args.num_shares)
    if not 2 <= args.threshold < args.num_shares <= args.clients:
        p.error("need 2 <= --threshold < --num-shares <= --clients")
    return args


def main() -> None:
    args = parse_args()
    dropped = dropped_clients(args.clients, args.dropout, args.seed)
    say(
        f"{args.clients} clients ({len(dropped)} dropping at {args.drop_stage}), "
        f"{args.params} params, k = {args.num_shares}, t = {args.threshold}"
    )
    start = time.perf_counter()
    plain = run_arm(False, args, dropped)
    secagg = run_arm(True, args, dropped)
    workflow = secaggplus_workflow(args)

    def ratio(key: str) -> float | None:
        a, b = cast(float | None, secagg[key]), cast(float | None, plain[key])
        return round(a / b, 4) if a is not None and b else None

    result = {
        "framework": "flower-secaggplus",
        "flwr_version": flwr.__version__,
        "numpy_version": np.__version__,
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "dropout": args.dropout,
        "dropped": len(dropped),
        "drop_stage": args.drop_stage,
        "params": args.params,
        "num_examples": args.num_examples,
        "seed": args.seed,
        "secaggplus_config": {
            key: getattr(workflow, key)
            for key in (
                "num_shares",
                "reconstruction_threshold",
                "clipping_range",
                "quantization_range",
                "modulus_range",
                "max_weight",
                "timeout",
            )
        },
        "bytes": "deflated flwr 1.42 wire objects of each message (no gRPC/HTTP framing)",
        "secaggplus": secagg,
        "plain": plain,
        "expansion_factor": ratio("bytes_sent_per_client"),
        "expansion_factor_received": ratio("bytes_received_per_client"),
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    text = json.dumps(result, indent=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    say(
        f"SecAgg+ {'completed' if secagg['completed'] else 'HALTED'}: "
        f"{secagg['bytes_sent_per_client']} B sent per client vs plain "
        f"{plain['bytes_sent_per_client']} (x{result['expansion_factor']}), server "
        f"{secagg['server_cpu_seconds']} s CPU; {result['total_seconds']} s in all; "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
