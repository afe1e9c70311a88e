"""Run one job of ``benchmarks/vs_peers.py`` in fedge (this project's environment).

    python benchmarks/peers/run_fedge.py JOB.json

The job's ``engine`` (sequential, vectorized or ray) trains the experiment that the job
describes through fedge's own config, ``prepare`` and ``run``: Fashion-MNIST, a
Dirichlet(0.5) partition and the cohorts drawn from the experiment seed (the runner checks
that they are the job's), the ``lenet`` preset, FedAvg. The test set is evaluated only
after the last round, and a round's time is its training time as fedge reports it
(``clients / clients_per_second``: sampling, local training and aggregation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_common as pc

import fedge
from fedge.config import parse_config
from fedge.fl.sampling import sample_clients
from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run


def main() -> None:
    job = pc.load_job(sys.argv[1])
    raw = {
        "name": f"vs-peers-{job['engine']}",
        "seed": job["seed"],
        "rounds": job["rounds"],
        "engine": job["engine"],
        "data": {"name": "fashion_mnist", "data_dir": str(pc.DATA_DIR)},
        "partition": {
            "scheme": "dirichlet",
            "num_clients": len(job["partition"]),
            "beta": job["beta"],
        },
        "model": {"preset": "lenet"},
        "client": {
            "epochs": job["epochs"],
            "batch_size": job["batch_size"],
            "lr": job["lr"],
            "momentum": job["momentum"],
        },
        "server": {"clients_per_round": int(job["schedule"].shape[1])},
        "eval": {"every": job["rounds"]},
    }
    if job["threads"]:
        raw["threads"] = job["threads"]
    fed = prepare(parse_config(raw, "vs_peers job"))
    # The job's arrays came from the same functions; check, so that all frameworks are
    # known to train the same clients on the same rows from the same start.
    assert len(fed.partition) == len(job["partition"])
    assert all(np.array_equal(a, b) for a, b in zip(fed.partition, job["partition"], strict=True))
    for r, cohort in enumerate(job["schedule"], start=1):
        drawn = sample_clients(len(fed.partition), fed.cohort, seed=job["seed"], round=r)
        assert np.array_equal(drawn, cohort), f"round {r}: cohort differs from the job's"
    result = run(fed)
    seconds = [m["clients"] / m["clients_per_second"] for m in result.history]
    names = [name for name, _ in build_model(fed.spec).named_parameters()]
    params = [result.state.params[name].detach().numpy() for name in names]
    pc.write_result(job, seconds, params, version=f"fedge {fedge.__version__}")


if __name__ == "__main__":
    main()
