"""Federated detection in the simulation: canvases split among clients by each image's
dominant class, local SGD on the detection task's loss, FedAvg, COCO mAP per round, and a
run's detector registered with its task.

A tiny detector on 32×32 canvases: the point is the plumbing and the arithmetic, not
accuracy (that is benchmarks/detection.py).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedge.central.datasets import DatasetArrays, DatasetStore
from fedge.central.publish import publish_run
from fedge.central.registry import ModelRegistry
from fedge.central.storage import LocalStore
from fedge.cli.main import app
from fedge.config import parse_config
from fedge.data.detection import dominant_classes
from fedge.errors import ConfigError
from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run

SIZE = 32
# Input 1×32×32 → output (10 + 4)×8×8: stride 4, as the centernet preset but tiny.
SPEC = json.loads((Path(__file__).parents[1] / "fixtures" / "tiny_centernet.json").read_text())


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


def experiment(spec_file, **changes):
    data = {
        "name": "detect",
        "rounds": 2,
        "engine": "sequential",
        "data": {"name": "canvases", "num_train": 36, "num_test": 8, "size": SIZE},
        "partition": {"scheme": "iid", "num_clients": 3},
        "model": {"spec": str(spec_file)},
        "client": {"batch_size": 8, "lr": 0.05},
    }
    data.update(changes)  # whole sections
    return parse_config(data)


def test_dominant_class_is_the_class_of_the_largest_box():
    pad = [-1, 0, 0, 0, 0]
    boxes = torch.tensor(
        [
            [[3, 0, 0, 10, 10], [5, 0, 0, 20, 20], pad],  # 100 vs 400 px²: class 5
            [[7, 5, 5, 35, 15], [2, 0, 0, 10, 40], pad],  # 300 vs 400 px²: class 2
            [[4, 0, 0, 10, 10], [6, 10, 10, 20, 20], pad],  # a tie: the first, 4
            [pad, pad, pad],  # no box
        ],
        dtype=torch.float32,
    )
    assert dominant_classes(boxes).tolist() == [5, 2, 4, -1]


def test_a_label_skewed_partition_splits_canvases_by_dominant_class(spec_file):
    fed = prepare(experiment(spec_file, partition={"scheme": "label_k", "num_clients": 4, "k": 1}))
    for rows in fed.partition:
        classes = set(dominant_classes(fed.data.train.y[torch.as_tensor(rows)]).tolist())
        assert len(classes) == 1, classes


def test_a_fedavg_round_of_detection_is_the_weighted_mean_of_plain_sgd(spec_file):
    """Round 1 with full-batch local SGD (2 steps) against a few-line reference: each
    client's SGD on the task's loss from the heatmap-prior initialization, then
    Σ n_k·w_k / Σ n_k."""
    cfg = experiment(
        spec_file,
        rounds=1,
        partition={"scheme": "dirichlet", "num_clients": 3, "beta": 0.5, "min_size": 4},
        client={"epochs": 2, "batch_size": None, "lr": 0.1},
    )
    fed = prepare(cfg)
    got = run(fed).state.params

    task = fed.task
    model = build_model(fed.spec, seed=cfg.seed)
    start = task.init_params(fed.spec, dict(model.named_parameters()))
    start = {k: v.detach().clone() for k, v in start.items()}
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in start.items()}
    sizes = []
    for rows in fed.partition:
        rows = torch.as_tensor(rows)
        x, y = fed.data.train.x[rows], fed.data.train.y[rows]
        w = {k: v.clone().requires_grad_() for k, v in start.items()}
        for _ in range(2):
            out = torch.func.functional_call(model, w, (x,))
            grads = torch.autograd.grad(task.loss(out, task.collate(y)), list(w.values()))
            stepped = zip(w.items(), grads, strict=True)
            w = {k: (v - 0.1 * g).detach().requires_grad_() for (k, v), g in stepped}
        for k in total:
            total[k] += len(rows) * w[k].detach().double()
        sizes.append(len(rows))
    assert len(set(sizes)) > 1  # unequal clients, so the weighting matters
    for k, v in total.items():
        torch.testing.assert_close(got[k], (v / sum(sizes)).float(), atol=1e-5, rtol=1e-4)
    assert not torch.equal(got[k], start[k])


def test_simulate_reports_map_and_the_run_registers_as_a_detector(spec_file, tmp_path):
    toml = tmp_path / "detect.toml"
    toml.write_text(
        f"""name = "detect"
rounds = 2
engine = "sequential"
[data]
name = "canvases"
num_train = 36
num_test = 8
size = {SIZE}
[partition]
scheme = "iid"
num_clients = 3
[model]
spec = "{spec_file}"
[client]
batch_size = 8
lr = 0.05
[task]
score_threshold = 0.25
"""
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", str(toml), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "mAP@.5" in result.output and "mAP@[.5:.95]" in result.output
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in rounds] == [1, 2]
    for m in rounds:
        assert 0 <= m["test_map"] <= m["test_map50"] <= 1 and m["test_loss"] > 0
        assert "test_accuracy" not in m
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_map50"] == rounds[-1]["test_map50"]
    assert summary["best_test_map50"] == max(m["test_map50"] for m in rounds)
    assert summary["task"]["kind"] == "detection"
    assert summary["task"]["score_threshold"] == 0.25
    assert (out / "curves.png").stat().st_size > 0

    version = publish_run(ModelRegistry(LocalStore(tmp_path / "store")), "det", out)
    assert version.task_kind == "detection"
    assert version.task["num_classes"] == 10 and version.task["score_threshold"] == 0.25


def test_a_dataset_version_of_boxes_simulates_on_its_own_test_split(spec_file, tmp_path):
    from fedge.data.canvases import CanvasConfig, fashion_mnist_canvases

    train, test = fashion_mnist_canvases(
        30, 6, seed=1, config=CanvasConfig(size=SIZE, max_items=2, max_scale=1.1)
    )
    root = tmp_path / "store"
    DatasetStore(LocalStore(root)).upload("boxes", DatasetArrays.from_detection(train, test))
    cfg = experiment(
        spec_file, rounds=1, data={"name": "store", "dataset": "boxes", "store": str(root)}
    )
    fed = prepare(cfg)
    assert fed.task is not None and fed.task.kind == "detection"
    assert len(fed.data.train) == 30 and torch.equal(fed.data.test.y, test.y)
    assert run(fed).history[0]["test_map50"] is not None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine": "vectorized"}, r'vectorized engine trains classifiers only.*"sequential"'),
        ({"attack": {"kind": "label_flip", "fraction": 0.5}}, "label_flip.*boxes"),
        ({"task": {"kind": "classification"}}, "kind is classification, but canvases holds"),
        ({"model": {"preset": "lenet"}}, 'detection data: use model.preset = "centernet"'),
    ],
)
def test_what_cannot_train_a_detector_is_refused_clearly(spec_file, changes, message):
    with pytest.raises(ConfigError, match=message):
        prepare(experiment(spec_file, **changes))


def test_classification_experiments_refuse_a_detection_task(digits):
    with pytest.raises(ConfigError, match="kind is detection, but digits holds classification"):
        prepare(digits(task={"kind": "detection"}))


def test_client_evaluation_of_a_detector_is_map_on_the_cohorts_images(spec_file):
    history = run(prepare(experiment(spec_file, rounds=1, eval={"client_eval": True}))).history
    m = history[0]
    assert 0 <= m["client_eval_map"] <= m["client_eval_map50"] <= 1
    assert np.isfinite(m["client_eval_loss"])


def test_data_describe_shows_the_dominant_classes_a_partition_splits(tmp_path):
    sets = ["data.name=canvases", "data.num_train=40", "data.num_test=4", f"data.size={SIZE}"]
    sets += ["partition.scheme=label_k", "partition.num_clients=4", "partition.k=1"]
    args = ["data", "describe", "--plot", str(tmp_path / "p.png")]
    result = CliRunner().invoke(app, [*args, *(f"--set={s}" for s in sets)])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 4
    for cells in rows:  # client, rows, labels, then one count per class
        counts = [int(c) for c in cells[3:]]
        assert int(cells[2]) == 1 and sum(counts) == int(cells[1]) and len(counts) == 10
    assert (tmp_path / "p.png").stat().st_size > 0
