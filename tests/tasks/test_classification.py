"""Classification as a task computes exactly what fedge computes today."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedge.central.edge import softmax as edge_softmax
from fedge.errors import ModelSpecError
from fedge.fl.local import evaluate
from fedge.models.spec import build_model, preset_spec
from fedge.tasks import Classification, Task, task_from_dict

SPEC = preset_spec("mlp", (1, 8, 8), 10, hidden=[16])


def _data(n=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    return x, torch.randint(0, 10, (n,), generator=generator)


def test_evaluate_is_bit_identical_to_fl_local_evaluate():
    x, y = _data()
    model = build_model(SPEC, seed=1)
    # batches of 300 (not a power of two): a batch's mean times 300 rounds differently
    # from its sum here, so "bit-identical" means the same reduction
    loss, accuracy = evaluate(model, x, y, batch_size=300)
    metrics = Classification(10).evaluate(model, x, y, batch_size=300)
    assert metrics == {"loss": loss, "accuracy": accuracy}
    assert 0 < accuracy < 1
    empty = Classification(10).evaluate(model, x[:0], y[:0])
    assert np.isnan(empty["loss"]) and np.isnan(empty["accuracy"])


def test_loss_is_cross_entropy_in_both_reductions():
    task = Classification(10)
    x, y = _data()
    logits = build_model(SPEC)(x)
    assert torch.equal(task.loss(logits, task.collate(y)), F.cross_entropy(logits, y))
    assert torch.equal(
        task.loss(logits, y, reduction="sum"), F.cross_entropy(logits, y, reduction="sum")
    )
    assert torch.equal(task.decode(logits), logits.argmax(dim=1))


def test_respond_matches_the_servers_answer_today():
    logits = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float32) * 4
    answer = Classification(10).respond(logits)
    assert answer["prediction"] == logits.argmax(axis=1).tolist()
    assert answer["probabilities"] == edge_softmax(logits).tolist()


def test_spec_output_must_have_one_logit_per_class():
    task = Classification(10)
    assert isinstance(task, Task)
    task.check_spec(SPEC)
    with pytest.raises(ModelSpecError, match=r"needs output shape \[3\]"):
        Classification(3).check_spec(SPEC)
    params = build_model(SPEC).state_dict()
    assert all(torch.equal(v, task.init_params(SPEC, params)[k]) for k, v in params.items())
    assert task_from_dict(task.to_dict()) == task
