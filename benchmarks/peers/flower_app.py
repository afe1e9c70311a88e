"""Flower's side of ``benchmarks/vs_peers.py``: a ClientApp and a ServerApp (Message API,
``flwr.serverapp.strategy.FedAvg``), run by ``run_flower.py`` with ``run_simulation``.

This is an importable module on purpose: Ray pickles the ClientApp into every task, and
cloudpickle pickles the functions of an importable module by reference (a function of
``__main__`` would travel by value, with whatever it refers to). The training data is a
module global that each Ray worker process fills on its first task from the IDX files and
the job's arrays, so it is loaded once per worker and never sent in a message.

Every round the ServerApp samples K distinct nodes with Flower's own sampler and tells
each of them, in its message, which client's data to train on: the cohort of the job's
schedule (fedge's sampler), so that all frameworks train the same clients. Aggregation is
Flower's ``FedAvg`` weighted by ``num-examples``; no federated evaluation
(``fraction_evaluate=0``); the test accuracy of the final weights is measured by
vs_peers.py. Round times are taken from the start of ``configure_train`` to the end of
``aggregate_train``.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import peer_common as pc
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

JOB_ENV = "FEDGE_BENCH_JOB"

# --- client side: filled once per worker process ----------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_state() -> dict[str, Any]:
    """The job, the training set and a model, loaded on this worker's first task."""
    if not _WORKER:
        job = pc.load_job(os.environ[JOB_ENV])
        torch.set_num_threads(1)  # one Ray CPU per client
        x, y = pc.load_train()
        _WORKER.update(job=job, x=x, y=y, model=pc.LeNet())
    return _WORKER


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    state = _worker_state()
    job, model = state["job"], state["model"]
    config = msg.content["config"]
    client, rnd = int(config["client"]), int(config["server-round"])
    x, y = pc.client_tensors(state["x"], state["y"], job["partition"][client])
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pc.train_local(
        model,
        x,
        y,
        epochs=job["epochs"],
        batch_size=job["batch_size"],
        lr=job["lr"],
        momentum=job["momentum"],
        seed=job["seed"],
        round=rnd,
        client=client,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


# --- server side -------------------------------------------------------------------------

RESULT: dict[str, Any] = {}


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, whose ``configure_train`` samples K nodes with Flower's sampler
    as FedAvg's does and tells each which client of the schedule it plays; the time from
    configuring a round to its aggregated model is recorded."""

    def __init__(self, schedule, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schedule = schedule
        self.round_seconds: list[float] = []
        self._t0 = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._t0 = time.perf_counter()
        cohort = self.schedule[server_round - 1]
        nodes, _ = sample_nodes(grid, self.min_available_nodes, len(cohort))
        return [
            Message(
                content=RecordDict(
                    {
                        "arrays": arrays,
                        "config": ConfigRecord(
                            {**config, "server-round": server_round, "client": int(client)}
                        ),
                    }
                ),
                message_type=MessageType.TRAIN,
                dst_node_id=node,
            )
            for node, client in zip(nodes, cohort, strict=True)
        ]

    def aggregate_train(self, server_round, replies):
        out = super().aggregate_train(server_round, replies)
        self.round_seconds.append(time.perf_counter() - self._t0)
        return out


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    job = pc.load_job(os.environ[JOB_ENV])
    random.seed(job["seed"])  # Flower samples nodes with `random`
    schedule = job["schedule"]
    n_clients, k = len(job["partition"]), schedule.shape[1]
    strategy = TimedFedAvg(
        schedule,
        fraction_train=k / n_clients,
        min_train_nodes=k,
        fraction_evaluate=0.0,
        min_available_nodes=n_clients,
    )
    model = pc.LeNet()
    pc.set_weights(model, job["init"])
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=job["rounds"],
    )
    model.load_state_dict(result.arrays.to_torch_state_dict())
    RESULT.update(round_seconds=strategy.round_seconds, params=pc.get_weights(model))
