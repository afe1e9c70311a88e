"""The Ray engine against the sequential reference, on a local 2-CPU Ray runtime."""

import logging
import os
import socket
import sys

import pytest
import torch

from fedge.errors import ConfigError
from fedge.fl.types import ClientTask
from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run
from fedge.sim.ray_engine import RayEngine, _check_reachable


@pytest.fixture(scope="module")
def ray_runtime():
    """One quiet, loopback-only Ray runtime with 2 CPUs for the whole module; engines
    reuse it (and so must not shut it down)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=100 * 2**20,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


STRATEGIES = [
    {"name": "fedavg"},
    {"name": "fedprox", "mu": 0.1},
    {"name": "scaffold"},
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s["name"])
def test_same_seed_same_model_as_the_sequential_engine(ray_runtime, digits, strategy):
    common = {
        "rounds": 2,
        "strategy": strategy,
        "client": {"epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        "system": {"stragglers": 0.25, "policy": "partial"},
    }
    seq = run(prepare(digits(engine="sequential", **common)))
    distributed = run(prepare(digits(engine="ray", ray_workers=2, **common)))
    for name, value in seq.state.params.items():
        diff = (value - distributed.state.params[name]).abs().max().item()
        assert diff <= 1e-4, f"{name} differs by {diff}"
    for a, b in zip(seq.history, distributed.history, strict=True):
        assert a["clients"] == b["clients"]
        assert a["stragglers"] == b["stragglers"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert ray_runtime.is_initialized(), "the engine shut down a runtime it did not start"


def test_data_is_put_once_and_loaded_once_per_worker(ray_runtime, digits, monkeypatch):
    fed = prepare(digits())
    put = ray_runtime.put
    shipped: list[object] = []

    def spy(value, **kwargs):
        shipped.append(value)
        return put(value, **kwargs)

    monkeypatch.setattr(ray_runtime, "put", spy)
    state = fed.strategy.init(dict(build_model(fed.spec).named_parameters()))
    with RayEngine(fed.spec, fed.clients, fed.local, seed=0, workers=2) as engine:
        for r in range(1, 4):
            task = ClientTask(round=r, params=state.params)
            updates = list(engine.train_round(fed.strategy, task, [0, 1, 2, 3, 4, 5]))
            assert sorted(u.client for u in updates) == [0, 1, 2, 3, 4, 5]
        stats = engine.worker_stats()
    # the dataset once (x, y, rows, sizes), the strategy once, then one task per round
    assert [type(v).__name__ for v in shipped] == ["tuple", type(fed.strategy).__name__] + [
        "ClientTask"
    ] * 3
    assert torch.equal(torch.from_numpy(shipped[0][0]), fed.clients.x)
    assert [s["data_loads"] for s in stats] == [1, 1]
    assert all(s["clients"] >= 3 for s in stats)
    assert sum(s["clients"] for s in stats) == 18


def test_more_workers_than_cpus_is_a_config_error(ray_runtime, digits):
    fed = prepare(digits())
    with pytest.raises(ConfigError, match="ray_workers=3"):
        RayEngine(fed.spec, fed.clients, fed.local, seed=0, workers=3)
    assert ray_runtime.is_initialized()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_address_is_a_config_error(scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match="cannot reach a Ray cluster"):
        _check_reachable(address)


def test_engine_reports_an_unreachable_cluster(digits, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    fed = prepare(digits())
    with pytest.raises(ConfigError, match="cannot reach a Ray cluster"):
        RayEngine(fed.spec, fed.clients, fed.local, seed=0, address=f"127.0.0.1:{_closed_port()}")


def test_missing_ray_is_a_config_error_naming_the_install(digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    fed = prepare(digits())
    with pytest.raises(ConfigError, match=r'pip install "ray>=2\.9"'):
        RayEngine(fed.spec, fed.clients, fed.local, seed=0)
