"""Run one job of ``benchmarks/vs_peers.py`` in Flower's simulation engine (Ray backend).

    venv-flower/bin/python benchmarks/peers/run_flower.py JOB.json

Flower's ``run_simulation`` with one virtual SuperNode per client, the ClientApp and
ServerApp of ``flower_app.py``, and a local Ray runtime with every core
(``init_args.num_cpus``) and one CPU per ClientApp, so that as many clients train at once
as there are cores (2 actors on a 2-core machine).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # Flower hands sys.path to the Ray workers as PYTHONPATH

import flwr  # noqa: E402
import peer_common as pc  # noqa: E402
from flower_app import JOB_ENV, RESULT, client_app, server_app  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def main() -> None:
    job_path = sys.argv[1]
    os.environ[JOB_ENV] = str(Path(job_path).resolve())  # inherited by the Ray workers
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # as fedge's Ray engine does
    job = pc.load_job(job_path)
    pc.set_threads(job["threads"])
    cores = os.cpu_count() or 1
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(job["partition"]),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "logging_level": logging.ERROR},
        },
    )
    if "params" not in RESULT:
        sys.exit("error: the Flower ServerApp did not finish (see the log above)")
    pc.write_result(
        job,
        RESULT["round_seconds"],
        RESULT["params"],
        version=f"flwr {flwr.__version__}",
        workers=cores,
    )


if __name__ == "__main__":
    main()
