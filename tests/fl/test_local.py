import pytest
import torch
import torch.nn.functional as F

from fedge.errors import ConfigError
from fedge.fl.local import (
    LocalTraining,
    client_generator,
    evaluate,
    get_params,
    set_params,
    train_client,
)
from fedge.fl.strategy import FedAvg, Strategy
from fedge.fl.types import ClientTask
from fedge.models.spec import build_model, preset_spec


@pytest.fixture
def setup():
    torch.manual_seed(0)
    spec = preset_spec("mlp", (1, 4, 4), 3, hidden=[8])
    x = torch.randn(37, 1, 4, 4)
    y = torch.randint(0, 3, (37,))
    return spec, x, y


def test_full_batch_single_epoch_is_one_gradient_descent_step(setup):
    spec, x, y = setup
    model = build_model(spec, seed=3)
    w0 = get_params(model)
    lr = 0.1
    update = train_client(
        build_model(spec),
        FedAvg(),
        ClientTask(round=1, params=w0),
        x,
        y,
        LocalTraining(epochs=1, batch_size=None, lr=lr),
        client_generator(0, 1, 0),
    )
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, w), g in zip(w0.items(), grads, strict=True):
        torch.testing.assert_close(update.params[name], w - lr * g, rtol=0, atol=1e-6)
    assert update.num_steps == 1
    assert update.num_samples == 37
    assert update.metrics["train_loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_minibatch_momentum_matches_a_plain_pytorch_loop(setup):
    spec, x, y = setup
    cfg = LocalTraining(epochs=2, batch_size=10, lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref = build_model(spec, seed=1)
    w0 = get_params(ref)
    update = train_client(
        build_model(spec), FedAvg(), ClientTask(1, w0), x, y, cfg, client_generator(5, 2, 7)
    )
    # The same batches in the same order, through torch.optim.SGD.
    gen = client_generator(5, 2, 7)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    steps = 0
    for _ in range(2):
        order = torch.randperm(37, generator=gen)
        for i in range(0, 37, 10):
            idx = order[i : i + 10]
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    assert update.num_steps == steps == 8
    for name, p in ref.named_parameters():
        torch.testing.assert_close(update.params[name], p.detach(), rtol=0, atol=1e-6)


def test_drop_last_skips_the_short_batch(setup):
    spec, x, y = setup
    cfg = LocalTraining(epochs=3, batch_size=10, lr=0.01, drop_last=True)
    assert cfg.steps_per_epoch(37) == 3
    update = train_client(
        build_model(spec),
        FedAvg(),
        ClientTask(1, get_params(build_model(spec))),
        x,
        y,
        cfg,
        client_generator(0, 1, 0),
    )
    assert update.num_steps == 9


class _ConstantPull(Strategy):
    """A strategy whose client half adds a constant to every gradient."""

    name = "constant"

    def grad_correction(self, params, task):
        return {k: torch.full_like(v, 2.0) for k, v in params.items()}

    def aggregate(self, state, updates):
        return state


def test_grad_correction_of_the_strategy_is_applied_at_every_step(setup):
    spec, x, y = setup
    w0 = get_params(build_model(spec))
    cfg = LocalTraining(epochs=1, batch_size=None, lr=0.1)
    plain = train_client(
        build_model(spec), FedAvg(), ClientTask(1, w0), x, y, cfg, client_generator(0, 1, 0)
    )
    pulled = train_client(
        build_model(spec), _ConstantPull(), ClientTask(1, w0), x, y, cfg, client_generator(0, 1, 0)
    )
    for name in w0:
        torch.testing.assert_close(pulled.params[name], plain.params[name] - 0.1 * 2.0)


class _ConstantDrift(Strategy):
    """A strategy whose client half drifts every weight after each optimizer step."""

    name = "drift"

    def step_correction(self, params, task):
        return {k: torch.full_like(v, 2.0) for k, v in params.items()}


def test_step_correction_bypasses_momentum(setup):
    spec, x, y = setup
    ref = build_model(spec, seed=2)
    w0 = get_params(ref)
    cfg = LocalTraining(epochs=1, batch_size=10, lr=0.1, momentum=0.9)
    drifted = train_client(
        build_model(spec),
        _ConstantDrift(),
        ClientTask(1, w0),
        x,
        y,
        cfg,
        client_generator(0, 1, 0),
    )
    # the same steps by hand: SGD with momentum, then w -= lr * 2 outside the buffer
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    order = torch.randperm(37, generator=client_generator(0, 1, 0))
    for i in range(0, 37, 10):
        idx = order[i : i + 10]
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
        with torch.no_grad():
            for p in ref.parameters():
                p.sub_(0.2)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(drifted.params[name], p.detach(), rtol=0, atol=1e-6)


def test_client_streams_depend_on_seed_round_and_client():
    def draw(*key):
        return torch.randperm(100, generator=client_generator(*key))

    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 1, 3))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 2))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


def test_evaluate_reports_loss_and_accuracy(setup):
    spec, x, y = setup
    model = build_model(spec)
    loss, acc = evaluate(model, x, y, batch_size=8)
    logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_set_params_copies_into_the_model(setup):
    spec, _, _ = setup
    model = build_model(spec)
    target = {k: torch.zeros_like(v) for k, v in get_params(model).items()}
    set_params(model, target)
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.0},
        {"lr": -1.0},
        {"epochs": 0},
        {"batch_size": 0},
        {"momentum": 1.0},
        {"weight_decay": -0.1},
        {"lr": float("nan")},
    ],
)
def test_invalid_local_training_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        LocalTraining(**kwargs)
