"""The vectorized engine against the sequential reference (the oracle)."""

import pytest
import torch

from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run
from fedge.sim.vectorized import VectorizedEngine

CNN = {
    "name": "tiny-cnn",
    "input_shape": [1, 8, 8],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
}


@pytest.fixture
def cnn_spec(tmp_path):
    import json

    path = tmp_path / "cnn.json"
    path.write_text(json.dumps(CNN))
    return str(path)


STRATEGIES = [
    {"name": "fedavg"},
    {"name": "fedprox", "mu": 0.1},
    {"name": "scaffold"},
    {"name": "fednova"},
    {"name": "fedadam", "server_lr": 0.05},
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s["name"])
def test_same_seed_same_model_on_both_engines(digits, cnn_spec, strategy):
    common = {
        "rounds": 3,
        "strategy": strategy,
        "model": {"spec": cnn_spec},
        "client": {"epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        "system": {"stragglers": 0.25, "policy": "partial"},
    }
    seq = run(prepare(digits(engine="sequential", **common)))
    vec = run(prepare(digits(engine="vectorized", **common)))
    for name, value in seq.state.params.items():
        diff = (value - vec.state.params[name]).abs().max().item()
        assert diff <= 1e-4, f"{name} differs by {diff}"
    for a, b in zip(seq.history, vec.history, strict=True):
        assert a["clients"] == b["clients"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_chunks_respect_the_memory_budget_and_do_not_change_results(digits):
    small = prepare(digits(engine="vectorized", max_memory_mb=1))
    big = prepare(digits(engine="vectorized", max_memory_mb=4096))
    assert (
        VectorizedEngine(small.spec, small.clients, small.local, seed=0, max_memory=2**16)._chunk
        < 4
    )
    a, b = run(small).state.params, run(big).state.params
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)


def test_full_batch_and_drop_last(digits):
    for client in (
        {"epochs": 2, "batch_size": None, "lr": 0.5},
        {"epochs": 2, "batch_size": 24, "lr": 0.1, "drop_last": True},
    ):
        seq = run(prepare(digits(client=client, engine="sequential"))).state.params
        vec = run(prepare(digits(client=client, engine="vectorized"))).state.params
        for name in seq:
            assert (seq[name] - vec[name]).abs().max().item() <= 1e-4


def test_worker_threads_change_no_update_and_keep_the_order(digits, cnn_spec):
    fed = prepare(digits(model={"spec": cnn_spec}, server={"clients_per_round": 7}))
    initial = dict(build_model(fed.spec, seed=0).named_parameters())
    task = fed.strategy.client_task(fed.strategy.init(initial))
    clients = [5, 0, 3, 7, 1, 6, 2]
    runs = {}
    for workers in (1, 2, 3):
        engine = VectorizedEngine(fed.spec, fed.clients, fed.local, seed=0, workers=workers)
        try:
            runs[workers] = list(engine.train_round(fed.strategy, task, clients))
        finally:
            engine.close()
    one = runs[1]
    for workers in (2, 3):
        assert [u.client for u in runs[workers]] == [u.client for u in one]
        for a, b in zip(one, runs[workers], strict=True):
            assert a.num_steps == b.num_steps and a.metrics == pytest.approx(b.metrics)
            for name in a.params:
                torch.testing.assert_close(a.params[name], b.params[name], rtol=0, atol=1e-5)
