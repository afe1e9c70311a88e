"""Bytes counted as runs go: federated tasks and updates, all-reduces, raw data uploads,
checked against sizes computed by hand."""

import json
from pathlib import Path

import pytest
import torch

from fedge.central.datasets import DatasetArrays, DatasetStore
from fedge.central.jobs import prepare_job, run_job
from fedge.central.storage import LocalStore
from fedge.central.train_config import parse_train_config
from fedge.config import parse_config
from fedge.data.digits import load_digits
from fedge.fl.sampling import sample_clients
from fedge.fl.types import ClientTask, ClientUpdate
from fedge.sim.experiment import prepare, run_to_folder
from fedge.traffic import (
    AllReduceCounter,
    fingerprint_test_set,
    ring_allreduce_bytes,
    task_nbytes,
    traffic_summary,
    update_nbytes,
)

# The MLP of these tests on 8×8 digits: 64 → 16 → 10, weights and biases, float32.
MLP_PARAMETERS = 64 * 16 + 16 + 16 * 10 + 10
MLP_BYTES = 4 * MLP_PARAMETERS
# One digits example as a training job holds it: 64 float32 features and an int64 label.
EXAMPLE_BYTES = 64 * 4 + 8


def lines(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_message_sizes_are_numel_times_element_size():
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float64)}
    extras = {"c": {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float64)}}
    by_hand = 12 * 4 + 4 * 8
    assert task_nbytes(ClientTask(round=1, params=params)) == by_hand
    task = ClientTask(round=1, params=params, extras=extras, client_state=extras)
    assert task_nbytes(task) == 2 * by_hand  # the client's own state is not sent
    update = ClientUpdate(
        client=0, params=params, num_samples=1, num_steps=1, extras=extras, client_state=extras
    )
    assert update_nbytes(update) == 2 * by_hand


def test_a_ring_all_reduce_sends_two_w_minus_one_payloads():
    # Ring all-reduce: W-1 reduce-scatter and W-1 all-gather steps in which each of the W
    # ranks sends one chunk of S/W bytes: 2 (W-1) S over all ranks.
    for world, payload in ((1, 100), (2, 100), (4, 1000), (3, 7)):
        chunk_sends = 2 * (world - 1) * world  # (steps) × (ranks sending per step)
        assert ring_allreduce_bytes(payload, world) * world == chunk_sends * payload
    counter = AllReduceCounter()
    counter.add(torch.zeros(10), 4)
    counter.add(torch.zeros(5, dtype=torch.float64), 4)
    assert (counter.calls, counter.payload, counter.sent) == (2, 80, 2 * 3 * 80)


def test_summary_totals_are_the_sums_of_the_lines():
    history = [
        {"examples": 10, "participants": 2, "bytes_down": 5, "bytes_up": 7, "bytes_data": 0,
         "samples_uploaded": 0, "bytes_sent": 12},
        {"examples": 30, "participants": 3, "bytes_down": 1, "bytes_up": 2, "bytes_data": 9,
         "samples_uploaded": 4, "bytes_sent": 12},
    ]  # fmt: skip
    s = traffic_summary(history, num_train=20, participants=4)
    assert s == {
        "examples": 40,
        "bytes_down": 6,
        "bytes_up": 9,
        "bytes_data": 9,
        "samples_uploaded": 4,
        "bytes_sent": 24,
        "participants": 4,
        "epochs_of_compute": 2.0,
        "bytes_up_per_participant": 9 / 4,
        "bytes_down_per_participant": 6 / 4,
    }


def sim_config(strategy, rounds=3, **extra):
    return parse_config(
        {
            "name": "traffic",
            "seed": 1,
            "rounds": rounds,
            "data": {"name": "digits"},
            "partition": {"scheme": "iid", "num_clients": 6},
            "model": {"preset": "mlp", "hidden": [16]},
            "client": {"epochs": 2, "batch_size": 32, "lr": 0.05},
            "server": {"clients_per_round": 2},
            "strategy": strategy,
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("strategy", "copies"),
    [({"name": "fedavg"}, 1), ({"name": "scaffold"}, 2)],  # SCAFFOLD: + c down, + Δc_i up
    ids=["fedavg", "scaffold"],
)
def test_a_simulation_counts_every_download_and_upload(tmp_path, strategy, copies):
    fed = prepare(sim_config(strategy))
    summary, out = run_to_folder(fed, tmp_path / "run")
    per_client = copies * MLP_BYTES
    sizes = fed.clients.sizes()
    seen = set()
    for r, m in enumerate(lines(out), start=1):
        chosen = sample_clients(6, 2, seed=1, round=r)
        seen.update(int(k) for k in chosen)
        assert m["bytes_down"] == 2 * per_client
        assert m["bytes_up"] == 2 * per_client
        assert m["bytes_sent"] == 4 * per_client
        assert (m["bytes_data"], m["samples_uploaded"], m["participants"]) == (0, 0, 2)
        assert m["examples"] == 2 * int(sizes[chosen].sum())  # 2 local epochs
    assert summary["bytes_sent"] == 3 * 4 * per_client
    assert summary["participants"] == len(seen)
    assert summary["bytes_up_per_participant"] == 3 * 2 * per_client / len(seen)
    assert summary["num_train"] == len(fed.data.train)
    assert summary["epochs_of_compute"] == pytest.approx(
        sum(m["examples"] for m in lines(out)) / len(fed.data.train)
    )
    assert summary["test_set_sha256"] == fingerprint_test_set(fed.data.test.x, fed.data.test.y)


def test_a_simulation_stops_at_its_wall_clock_limit(tmp_path):
    fed = prepare(sim_config({"name": "fedavg"}, rounds=50, max_seconds=1e-6))
    summary, out = run_to_folder(fed, tmp_path / "run")
    (line,) = lines(out)
    assert line["round"] == 1 and line["test_accuracy"] is not None
    assert summary["rounds"] == 1


@pytest.fixture
def store_url(tmp_path):
    url = str(tmp_path / "store")
    DatasetStore(LocalStore(url)).upload("digits", DatasetArrays.from_data(load_digits()))
    return url


def job(store_url, **train):
    settings = {"epochs": 2, "batch_size": 100, "lr": 0.05, "momentum": 0.9} | train
    return prepare_job(
        parse_train_config(
            {
                "name": "traffic-job",
                "store": store_url,
                "dataset": {"name": "digits"},
                "model": {"preset": "mlp", "hidden": [16]},
                "train": settings,
            }
        )
    )


def test_a_central_job_counts_its_training_data_uploaded_once(tmp_path, store_url):
    j = job(store_url)
    n = len(j.y_train)
    result = run_job(j, tmp_path / "job")
    first, second = lines(result.out)
    assert (first["bytes_data"], first["samples_uploaded"]) == (n * EXAMPLE_BYTES, n)
    assert (second["bytes_data"], second["samples_uploaded"]) == (0, 0)
    for m in (first, second):
        assert (m["bytes_up"], m["bytes_down"], m["participants"], m["examples"]) == (0, 0, 1, n)
        assert m["bytes_sent"] == m["bytes_data"]
    s = result.summary
    assert (s["bytes_sent"], s["samples_uploaded"], s["bytes_up_per_participant"]) == (
        n * EXAMPLE_BYTES, n, 0)  # fmt: skip
    assert s["epochs_of_compute"] == 2.0 and s["num_parameters"] == MLP_PARAMETERS
    assert s["test_set_sha256"] == fingerprint_test_set(j.x_test, j.y_test)


def test_data_parallel_workers_count_their_all_reduce_traffic(tmp_path, store_url):
    j = job(store_url)
    n = len(j.y_train)
    result = run_job(j, tmp_path / "ddp", workers=2)
    steps = -(-n // 100)
    # Each step all-reduces the gradients and the loss (float32); each evaluation sums
    # three float64 totals. Ring over 2 workers: 2 (W-1) = 2 payloads on the wire.
    per_epoch = steps * 2 * (MLP_BYTES + 4) + 2 * 3 * 8
    first, second = lines(result.out)
    assert first["bytes_up"] == first["bytes_down"] == per_epoch
    assert first["bytes_sent"] == per_epoch + n * EXAMPLE_BYTES
    assert second["bytes_sent"] == per_epoch and second["participants"] == 2
    assert result.summary["bytes_up_per_participant"] == 2 * per_epoch / 2


def test_a_job_stops_at_its_wall_clock_limit(tmp_path, store_url):
    result = run_job(job(store_url, epochs=20, max_seconds=1e-6), tmp_path / "job")
    assert len(lines(result.out)) == 1
    assert result.summary["epochs"] == 1


def _loopback_bytes():
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            return int(line.split()[1])
    return None


def _all_reduce_on_loopback(dist, floats, rounds, results):
    tensor = torch.ones(floats)
    dist.barrier()
    before = _loopback_bytes() if dist.is_main else 0
    for _ in range(rounds):
        dist.all_sum(tensor)
    dist.barrier()
    if dist.is_main:
        results.put((_loopback_bytes() - before, dist.traffic.sent))


@pytest.mark.skipif(
    not Path("/proc/net/dev").is_file() or _loopback_bytes() is None, reason="Linux counters"
)
def test_counted_all_reduce_bytes_are_what_crosses_the_loopback_interface():
    """Three gloo workers on loopback: the interface carries the ring's 2 (W-1) S bytes per
    all-reduce, plus TCP/IP headers (and whatever else this machine sends meanwhile)."""
    import torch.multiprocessing as mp

    from fedge.central.ddp import launch

    results = mp.get_context("spawn").SimpleQueue()
    launch(_all_reduce_on_loopback, (4_000_000, 5, results), 3)
    wire, counted = results.get()
    assert counted == 5 * 2 * 2 * 4_000_000 * 4
    # The count models a ring; gloo splits an odd-sized tensor into chunks of its own, and
    # measured 0.4% under the model on one run and 0.3% over on another, headers included.
    assert 0.98 * counted <= wire < 1.25 * counted
