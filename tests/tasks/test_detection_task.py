"""The detection task: spec checks, initial weights, loss, evaluation and responses."""

import json

import numpy as np
import pytest
import torch

from fedge.errors import ConfigError, ModelSpecError
from fedge.models.spec import build_model, load_spec, preset_spec
from fedge.tasks import Detection, Task, task_from_dict
from fedge.tasks.centernet import CenterNetTargets

SPEC = load_spec(
    {
        "name": "tiny-detector",
        "input_shape": [1, 32, 48],
        "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "groupnorm", "groups": 2},
            {"type": "relu"},
            {"type": "conv2d", "filters": 7, "kernel_size": 3, "stride": 2, "padding": 1},
        ],
    }
)
BOXES = torch.tensor(
    [
        [[0, 2, 3, 14, 11], [2, 16, 12, 30, 31]],
        [[1, 5, 5, 25, 21], [-1, 0, 0, 0, 0]],
        [[-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]],  # an image without objects
    ],
    dtype=torch.float32,
)


def _perfect_outputs(task, boxes):
    """The map a perfect detector would output: confident peaks at the centres, exact
    sizes and offsets there."""
    t = task.collate(boxes)
    logits = torch.where(t.heatmap == 1, 8.0, -8.0)
    return torch.cat([logits, t.size, t.offset], dim=1)


class _Constant(torch.nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, x):
        start = self.calls
        self.calls += x.shape[0]
        return self.outputs[start : start + x.shape[0]]


def test_from_spec_reads_classes_and_stride_and_checks_the_output():
    task = Detection.from_spec(SPEC)
    assert (task.num_classes, task.image_size, task.stride) == (3, (32, 48), 4)
    assert task.output_size == (8, 12)
    assert isinstance(task, Task)
    task.check_spec(SPEC)
    with pytest.raises(ModelSpecError, match=r"needs output \[5, 8, 12\]"):
        Detection(1, (32, 48)).check_spec(SPEC)
    with pytest.raises(ModelSpecError, match="maps"):
        Detection.from_spec(preset_spec("lenet", (1, 28, 28), 10))
    centernet = preset_spec("centernet", (1, 96, 96), 10)
    assert Detection.from_spec(centernet).stride == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0, "image_size": (32, 32)}, "at least one class"),
        ({"num_classes": 2, "image_size": (30, 32)}, "must divide"),
        ({"num_classes": 2, "image_size": (32, 32), "score_threshold": 2}, "score threshold"),
        ({"num_classes": 2, "image_size": (32, 32), "max_detections": 0}, "max detections"),
    ],
)
def test_bad_task_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Detection(**kwargs)


def test_initial_heatmap_bias_is_centernets_prior_and_nothing_else_changes():
    task = Detection.from_spec(SPEC)
    params = build_model(SPEC, seed=0).state_dict()
    init = task.init_params(SPEC, params)
    bias = init["conv2d3.bias"]
    assert torch.allclose(torch.sigmoid(bias[:3]), torch.tensor(0.1))
    assert torch.equal(bias[3:], params["conv2d3.bias"][3:])
    assert all(torch.equal(init[k], params[k]) for k in params if k != "conv2d3.bias")
    assert not torch.equal(params["conv2d3.bias"][:3], bias[:3])  # the input is not edited


def test_loss_is_a_mean_of_per_image_terms():
    task = Detection.from_spec(SPEC)
    outputs = torch.randn(3, 7, 8, 12, generator=torch.Generator().manual_seed(1))
    targets = task.collate(BOXES)
    assert isinstance(targets, CenterNetTargets)
    whole = task.loss(outputs, targets)
    singles = [task.loss(outputs[i : i + 1], task.collate(BOXES[i : i + 1])) for i in range(3)]
    torch.testing.assert_close(whole, torch.stack(singles).mean())
    torch.testing.assert_close(task.loss(outputs, targets, reduction="sum"), 3 * whole)
    perfect = task.loss(_perfect_outputs(task, BOXES), targets)
    assert perfect < 0.05 < whole


def test_perfect_outputs_decode_to_the_true_boxes_and_score_map_one():
    task = Detection.from_spec(SPEC)
    outputs = _perfect_outputs(task, BOXES)
    rows = task.decode(outputs)
    assert [len(r) for r in rows] == [2, 1, 0]
    got = sorted(rows[0][:, [0, 2, 3, 4, 5]].tolist())
    np.testing.assert_allclose(got, (BOXES[0] / torch.tensor([1, 48, 32, 48, 32])).tolist(),
                               atol=1e-6)  # fmt: skip
    metrics = task.evaluate(_Constant(outputs), torch.zeros(3, 1, 32, 48), BOXES, batch_size=2)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0)
    assert metrics["loss"] == pytest.approx(float(task.loss(outputs, task.collate(BOXES))))


def test_evaluation_sees_shifted_boxes():
    task = Detection.from_spec(SPEC)
    outputs = _perfect_outputs(task, BOXES)
    shifted = outputs.clone()
    shifted[:, 5] += 1.0  # every centre one cell (4 px) to the right
    metrics = task.evaluate(_Constant(shifted), torch.zeros(3, 1, 32, 48), BOXES)
    assert metrics["map"] < 0.5


def test_respond_gives_rows_per_image_without_torch_types():
    task = Detection.from_spec(SPEC)
    answer = task.respond(_perfect_outputs(task, BOXES).numpy(), score_threshold=0.5)
    prediction = answer["prediction"]
    assert [len(p) for p in prediction] == [2, 1, 0]
    cls, score, *corners = prediction[1][0]
    assert type(cls) is int and cls == 1
    assert score > 0.99 and all(type(v) is float for v in corners)
    assert corners == pytest.approx([5 / 48, 5 / 32, 25 / 48, 21 / 32], abs=1e-6)
    top = task.respond(_perfect_outputs(task, BOXES).numpy(), max_detections=1)
    assert len(top["prediction"][0]) == 1


def test_tasks_round_trip_through_their_description():
    task = Detection(3, (32, 48), score_threshold=0.4)
    assert task_from_dict(task.to_dict()) == task
    named = Detection(3, (32, 48), categories=("cat", "dog", "bird"))
    assert named.to_dict()["categories"] == ["cat", "dog", "bird"]
    assert task_from_dict(json.loads(json.dumps(named.to_dict()))) == named
    with pytest.raises(ConfigError, match="2 category names for 3 classes"):
        Detection(3, (32, 48), categories=("cat", "dog"))
    with pytest.raises(ConfigError, match="unknown task kind"):
        task_from_dict({"kind": "segmentation"})
    with pytest.raises(ConfigError, match="invalid detection task"):
        task_from_dict({"kind": "detection", "classes": 3})
