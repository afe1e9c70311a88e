"""The ServerApp and ClientApp that ``benchmarks/peers/flower_deploy.py`` runs on Flower's
deployment runtime (Message API, ``flwr.serverapp.strategy.FedAvg``).

ClientApp: the SuperNode's ``--node-config`` names its partition (``partition-id`` of
``num-partitions``): an IID split of Fashion-MNIST's training set, computed as fedge's
``fedge.data.partition.iid`` computes it (``numpy.random.default_rng(seed)``'s permutation
of all rows, dealt into near-equal parts with ``numpy.array_split``). Each ClientApp
process reads the IDX files and keeps only its rows (as float32 in [0, 1], the values of
``peer_common.load_train``) the first time it needs them; Flower 1.42 starts one
``flwr-clientapp`` process per message, so in practice that is once per round. It trains
with ``peer_common.train_local`` (the same local SGD and batch order as the other peers,
client index = partition id) and replies with its weights and ``num-examples``.

ServerApp: waits until all ``num-clients`` SuperNodes are connected, then runs
``num-server-rounds`` rounds of FedAvg with every node in every round
(``fraction_train=1``), weighted by ``num-examples``, from the LeNet that
``torch.manual_seed(seed)`` initializes; no federated evaluation. It appends one JSON line
per event to the run-config's ``timing-file`` (wall-clock ``time.time()`` stamps):
``start``, ``nodes-ready``, one ``round`` line per round (``start`` = entering
``configure_train``, ``end`` = leaving ``aggregate_train``) and ``done``, or ``error``.
Each ClientApp reports, besides ``num-examples``, how long its process had been alive when
``train`` was called (``startup-s``: interpreter, imports, fetching the message and the
app), loading its partition (``load-s``) and training (``train-s``); the ``round`` line
holds their mean and maximum over the replies.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import peer_common as pc  # on PYTHONPATH: set by flower_deploy.py for every process
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

# --- client side -------------------------------------------------------------------------

_PARTITIONS: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def load_partition(
    partition_id: int, num_partitions: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's IID share of the training set, read once per process: images of
    shape (n, 1, 28, 28) as float32 ``x / 255`` and int64 labels, in permutation order
    (the rows and values that ``peer_common.client_tensors(*load_train(), rows)`` gives,
    without converting the other clients' 59,000-odd images)."""
    key = (partition_id, num_partitions, seed)
    if key not in _PARTITIONS:
        labels = pc.read_idx(pc.find("train-labels-idx1-ubyte")).astype(np.int64)
        order = np.random.default_rng(seed).permutation(labels.shape[0])
        rows = np.array_split(order, num_partitions)[partition_id]
        images = pc.read_idx(pc.find("train-images-idx3-ubyte"))
        x = images[rows].reshape(-1, 1, 28, 28).astype(np.float32)
        x /= 255.0
        _PARTITIONS[key] = torch.from_numpy(x), torch.from_numpy(labels[rows])
    return _PARTITIONS[key]


client_app = ClientApp()


def process_age() -> float:
    """Seconds since this process started (``/proc``: its start time after boot)."""
    stat = Path("/proc/self/stat").read_text()
    start_ticks = int(stat[stat.rfind(")") + 2 :].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    startup = process_age()
    t0 = time.perf_counter()
    cfg = context.run_config
    torch.set_num_threads(int(cfg["threads"]))
    partition = int(context.node_config["partition-id"])
    seed = int(cfg["seed"])
    x, y = load_partition(partition, int(context.node_config["num-partitions"]), seed)
    t1 = time.perf_counter()
    model = pc.LeNet()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pc.train_local(
        model,
        x,
        y,
        epochs=int(cfg["epochs"]),
        batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        seed=seed,
        round=int(msg.content["config"]["server-round"]),
        client=partition,
    )
    metrics = {
        "num-examples": len(y),
        "startup-s": startup,
        "load-s": t1 - t0,
        "train-s": time.perf_counter() - t1,
    }
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


# --- server side -------------------------------------------------------------------------


class EventLog:
    """Appends one JSON object per line to a file, flushed at once, so that the driver
    can follow the run while it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.time(), **fields})
        with self.path.open("a") as fh:
            fh.write(line + "\n")


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, with a ``round`` event per round: from entering
    ``configure_train`` (node sampling, messages) to the aggregated model (replies
    received and averaged), and how many replies came back and how many were errors."""

    def __init__(self, events: EventLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events
        self._start = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._start = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        end = time.time()
        ok = [m.content["metrics"] for m in replies if not m.has_error()]
        self.events.write(
            "round",
            round=server_round,
            start=self._start,
            end=end,
            replies=len(replies),
            errors=len(replies) - len(ok),
            clientapp={
                key: {
                    "mean": statistics.fmean(float(r[key]) for r in ok),
                    "max": max(float(r[key]) for r in ok),
                }
                for key in ("startup-s", "load-s", "train-s")
            }
            if ok
            else {},
        )
        return out


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    """Block until ``count`` SuperNodes are connected; ``TimeoutError`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} SuperNodes after {timeout:.0f} s")
        time.sleep(0.2)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    events = EventLog(Path(str(cfg["timing-file"])))
    events.write("start")
    try:
        clients = int(cfg["num-clients"])
        wait_for_nodes(grid, clients, float(cfg["node-wait-seconds"]))
        events.write("nodes-ready", nodes=clients)
        torch.manual_seed(int(cfg["seed"]))
        model = pc.LeNet()
        strategy = TimedFedAvg(
            events,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=int(cfg["num-server-rounds"]),
            timeout=float(cfg["round-timeout-seconds"]),
        )
    except BaseException:
        events.write("error", traceback=traceback.format_exc())
        raise
    events.write("done")
