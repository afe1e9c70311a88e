"""Run one job of ``benchmarks/vs_peers.py`` in Apple's pfl (PyTorch simulation).

    venv-pfl/bin/python benchmarks/peers/run_pfl.py JOB.json                # one process
    venv-pfl/bin/python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        benchmarks/peers/run_pfl.py JOB.json                               # two processes

pfl as its tutorials set it up: ``FederatedAveraging`` with ``SimulatedBackend`` and the
``WeightByDatapoints`` postprocessor (FedAvg weighted by sample count), a
``PyTorchModel`` with a fresh ``torch.optim.SGD`` per client and a central SGD with
learning rate 1 (w ← w + mean Δ), and a ``FederatedDataset`` whose ``make_dataset_fn``
slices the client's rows from the training set that this process loaded once. Under
``torch.distributed.run`` pfl splits each cohort among the processes and all-reduces the
sums (gloo); only rank 0 writes the result.

The user sampler returns the clients of the job's schedule (fedge's sampler: K distinct
clients per round) and the client's rows come in the order of fedge's first-epoch
permutation (pfl's ``Dataset`` cuts consecutive batches and does not reshuffle; with one
local epoch this is the same SGD). pfl's per-user evaluation on ``do_evaluation``
iterations (always iteration 0) is switched off: only training is timed, as for the others.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import peer_common as pc
import pfl.version
import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.hyperparam import NNTrainHyperParams
from pfl.internal.ops.selector import get_default_framework_module
from pfl.metrics import Metrics
from pfl.model.pytorch import PyTorchModel


class ScheduleSampler:
    """pfl user sampler (``callable() -> user id``) that walks the job's schedule: the
    K clients of round 1, then those of round 2, ...; a user id is ``(round, client)``."""

    def __init__(self, schedule: np.ndarray) -> None:
        self.ids = [(r + 1, int(k)) for r, cohort in enumerate(schedule) for k in cohort]
        self.next = 0

    def __call__(self) -> tuple[int, int]:
        user = self.ids[self.next % len(self.ids)]
        self.next += 1
        return user


class TrainOnlyFedAvg(FederatedAveraging):
    """pfl's FederatedAveraging without the per-user evaluation before and after local
    training that pfl runs on evaluation iterations."""

    def get_next_central_contexts(self, *args, **kwargs):
        contexts, model, metrics = super().get_next_central_contexts(*args, **kwargs)
        if contexts is not None:
            contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
        return contexts, model, metrics


class RoundTimer(TrainingProcessCallback):
    """Seconds from the start of training (or the end of the previous round) to the end
    of each central iteration."""

    def __init__(self) -> None:
        self.round_seconds: list[float] = []
        self.last = 0.0

    def on_train_begin(self, *, model) -> Metrics:
        self.last = time.perf_counter()
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        now = time.perf_counter()
        self.round_seconds.append(now - self.last)
        self.last = now
        return False, Metrics()


def main() -> None:
    job = pc.load_job(sys.argv[1])
    workers = int(os.environ.get("WORLD_SIZE", "1"))
    pc.set_threads(1 if workers > 1 else job["threads"])
    np.random.seed(job["seed"])
    torch.manual_seed(job["seed"])
    x, y = pc.load_train()  # once per process
    partition, seed = job["partition"], job["seed"]

    def make_dataset(user: tuple[int, int]) -> Dataset:
        rnd, client = user
        cx, cy = pc.client_tensors(x, y, partition[client])
        return Dataset(pc.shuffled(cx, cy, seed, rnd, client), user_id=str(client))

    schedule = job["schedule"]
    train_data = FederatedDataset(make_dataset, ScheduleSampler(schedule))
    backend = SimulatedBackend(
        training_data=train_data, val_data=train_data, postprocessors=[WeightByDatapoints()]
    )
    net = pc.LeNet()
    pc.set_weights(net, job["init"])
    model = PyTorchModel(
        model=net,
        local_optimizer_create=functools.partial(torch.optim.SGD, momentum=job["momentum"]),
        central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
    )
    timer = RoundTimer()
    TrainOnlyFedAvg().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=job["rounds"],
            evaluation_frequency=job["rounds"] + 1,
            train_cohort_size=schedule.shape[1],
            val_cohort_size=None,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_num_epochs=job["epochs"],
            local_learning_rate=job["lr"],
            local_batch_size=job["batch_size"],
        ),
        callbacks=[timer],
        send_metrics_to_platform=False,
    )
    if get_default_framework_module().distributed.global_rank == 0:
        pc.write_result(
            job,
            timer.round_seconds,
            pc.get_weights(net),
            version=f"pfl {pfl.version.__version__}",
            workers=workers,
        )


if __name__ == "__main__":
    main()
