"""The plain-PyTorch detector training loop: flips, schedule, determinism, learning."""

import math

import numpy as np
import pytest
import torch

from fedge.data.canvases import CanvasConfig, make_canvases
from fedge.errors import ConfigError
from fedge.models.spec import load_spec
from fedge.tasks import Detection
from fedge.tasks.detection_train import DetectorTraining, _lr_factor, flip_batch, train_detector

SPEC = load_spec(
    {
        "name": "tiny-detector",
        "input_shape": [1, 32, 32],
        "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "groupnorm", "groups": 2},
            {"type": "relu"},
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "groupnorm", "groups": 2},
            {"type": "relu"},
            {"type": "conv2d", "filters": 6, "kernel_size": 1},
        ],
    }
)


def _canvases(n, seed):
    items = np.zeros((4, 28, 28), dtype=np.uint8)
    items[0, 4:24, 10:18] = 255  # a tall bar, class 0
    items[1, 10:18, 4:24] = 160  # a wide bar, class 1
    items[2, 6:22, 6:22] = 220
    items[3, 8:20, 2:26] = 120
    config = CanvasConfig(size=32, max_items=1, min_scale=0.5, max_scale=1.0)
    return make_canvases(n, items, np.array([0, 1, 0, 1]), seed=seed, config=config,
                         categories=("tall", "wide"))  # fmt: skip


def test_flip_mirrors_images_and_boxes_and_leaves_padding():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    y = torch.tensor([[[1, 0, 1, 3, 2], [-1, 0, 0, 0, 0]], [[0, 1, 1, 2, 2], [-1, 0, 0, 0, 0]]])
    fx, fy = flip_batch(x, y.float(), torch.tensor([True, False]))
    assert torch.equal(fx[0], x[0].flip(-1)) and torch.equal(fx[1], x[1])
    assert fy[0, 0].tolist() == [1, 1, 1, 4, 2]  # x 0..3 of 4 -> 1..4
    assert fy[0, 1].tolist() == [-1, 0, 0, 0, 0]
    assert torch.equal(fy[1], y[1].float())
    back_x, back_y = flip_batch(fx, fy, torch.tensor([True, False]))
    assert torch.equal(back_x, x) and torch.equal(back_y, y.float())


def test_schedule_warms_up_then_anneals_by_steps_or_time():
    assert _lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert _lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert _lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert _lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert _lr_factor(100, 100, 10) == pytest.approx(0.0)
    # half the time budget used after few steps: already half-way down
    assert _lr_factor(12, 100, 10, time_used=0.5) == pytest.approx(0.5)
    assert _lr_factor(12, 100, 10, time_used=2.0) == pytest.approx(0.0)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="learning rate"):
        DetectorTraining(lr=math.nan)
    with pytest.raises(ConfigError, match="optimizer"):
        DetectorTraining(optimizer="rmsprop")


def test_training_learns_and_is_deterministic():
    torch.set_num_threads(1)
    train, test = _canvases(64, seed=0), _canvases(16, seed=1)
    task = Detection.from_spec(SPEC)
    config = DetectorTraining(epochs=6, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=3)
    first = train_detector(SPEC, task, train, test, config)
    assert [m["epoch"] for m in first.history] == list(range(1, 7))
    assert "test_map50" in first.history[2] and "test_map50" not in first.history[0]
    assert first.history[-1]["train_loss"] < 0.6 * first.history[0]["train_loss"]
    assert first.final["test_loss"] < first.history[2]["test_loss"]
    again = train_detector(SPEC, task, train, test, config)
    assert all(torch.equal(first.params[k], again.params[k]) for k in first.params)
    sgd = train_detector(SPEC, task, train, test,
                         DetectorTraining(epochs=1, optimizer="sgd", lr=1e-3))  # fmt: skip
    assert not torch.equal(sgd.params["conv2d0.weight"], first.params["conv2d0.weight"])


def test_a_time_budget_stops_after_the_step_that_uses_it():
    train = _canvases(32, seed=0)
    task = Detection.from_spec(SPEC)
    config = DetectorTraining(epochs=5, batch_size=8, max_seconds=1e-9)
    result = train_detector(SPEC, task, train, train, config)
    assert len(result.history) == 1 and result.final["steps"] == 1
    assert "test_map" in result.final  # the last epoch is always evaluated
