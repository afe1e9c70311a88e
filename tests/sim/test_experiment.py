import json

import numpy as np
import pytest
import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.types import ClientTask
from fedge.sim.engine import SequentialEngine
from fedge.sim.experiment import prepare, run, run_to_folder


def test_a_short_run_learns_and_reports_every_round(digits):
    result = run(prepare(digits(rounds=4)))
    assert [m["round"] for m in result.history] == [1, 2, 3, 4]
    for m in result.history:
        assert {"test_accuracy", "test_loss", "seconds", "train_loss"} <= m.keys()
        assert m["clients"] == 4 and m["rejected"] == 0
    assert result.history[-1]["test_accuracy"] > 0.3  # chance is 0.1
    assert result.history[-1]["test_loss"] < result.history[0]["test_loss"]
    assert result.state.rounds_completed == 4


def test_same_seed_same_model_different_seed_different_model(digits):
    a = run(prepare(digits())).state.params
    b = run(prepare(digits())).state.params
    c = run(prepare(digits(seed=1))).state.params
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_clients_update_does_not_depend_on_its_cohort(digits):
    fed = prepare(digits())
    engine = SequentialEngine(fed.spec, fed.clients, fed.local, seed=0)
    from fedge.models.spec import build_model

    task = ClientTask(round=2, params=dict(build_model(fed.spec).named_parameters()))
    alone = next(engine.train_round(fed.strategy, task, [5]))
    among = list(engine.train_round(fed.strategy, task, [1, 3, 5]))[-1]
    assert among.client == alone.client == 5
    assert all(torch.equal(alone.params[k], among.params[k]) for k in alone.params)


def test_client_side_evaluation_is_reported_when_asked(digits):
    history = run(prepare(digits(rounds=1, eval={"client_eval": True}))).history
    assert 0 <= history[0]["client_eval_accuracy"] <= 1
    assert history[0]["client_eval_loss"] > 0


def test_evaluation_every_k_rounds_and_after_the_last(digits):
    history = run(prepare(digits(rounds=5, eval={"every": 2}))).history
    evaluated = [m["round"] for m in history if m["test_accuracy"] is not None]
    assert evaluated == [2, 4, 5]


def test_a_diverging_run_stops_with_a_clear_error(digits):
    fed = prepare(digits(client={"epochs": 3, "batch_size": 8, "lr": 1e30}))
    with pytest.raises(FedgeError, match=r"NaN or Inf.*lower client\.lr"):
        run(fed)


def test_more_clients_per_round_than_clients_is_rejected(digits):
    with pytest.raises(ConfigError, match=r"clients per round \(9\) is more than .* \(8\)"):
        prepare(digits(server={"clients_per_round": 9}))


def test_data_without_natural_users_needs_a_partition(digits):
    cfg = digits()
    cfg = cfg.model_copy(update={"partition": None})
    with pytest.raises(ConfigError, match="no natural partition"):
        prepare(cfg)


def test_model_spec_must_match_the_data(digits, tmp_path):
    spec = tmp_path / "spec.json"
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10}]
    spec.write_text(json.dumps({"input_shape": [1, 28, 28], "layers": layers}))
    with pytest.raises(ConfigError, match=r"expects input \[1, 28, 28\].*\[1, 8, 8\]"):
        prepare(digits(model={"spec": str(spec)}))


def test_model_spec_must_output_one_logit_per_class(digits, tmp_path):
    spec = tmp_path / "spec.json"
    layers = [{"type": "flatten"}, {"type": "dense", "units": 3}]
    spec.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": layers}))
    with pytest.raises(ConfigError, match=r"outputs \[3\] but digits has 10 classes"):
        prepare(digits(model={"spec": str(spec)}))


def test_run_to_folder_publishes_a_complete_result(digits, tmp_path):
    summary, path = run_to_folder(prepare(digits(rounds=2)), tmp_path / "run")
    assert path == tmp_path / "run"
    assert not (tmp_path / "run.partial").exists()
    names = {p.name for p in path.iterdir()}
    assert names == {
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "model.safetensors",
        "model.json",
    }
    lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    assert (
        json.loads((path / "summary.json").read_text())["final_test_accuracy"]
        == (summary["final_test_accuracy"])
    )
    assert (path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_run_leaves_only_a_partial_folder(digits, tmp_path):
    fed = prepare(digits(client={"epochs": 3, "batch_size": 8, "lr": 1e30}))
    with pytest.raises(FedgeError):
        run_to_folder(fed, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "run.partial" / "config.toml").exists()


def test_run_to_folder_refuses_to_overwrite_results(digits, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="--force"):
        run_to_folder(prepare(digits(rounds=1)), tmp_path / "run")


def test_a_partition_seed_overrides_the_experiment_seed(digits):
    from fedge.config import parse_section
    from fedge.data.load import partition_data

    data = prepare(digits()).data
    fixed = parse_section("partition", {"scheme": "dirichlet", "num_clients": 8, "seed": 42})
    free = parse_section("partition", {"scheme": "dirichlet", "num_clients": 8})

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(partition_data(data, fixed, seed=0), partition_data(data, fixed, seed=7))
    assert not same(partition_data(data, free, seed=0), partition_data(data, free, seed=7))
    assert same(partition_data(data, fixed, seed=0), partition_data(data, free, seed=42))
