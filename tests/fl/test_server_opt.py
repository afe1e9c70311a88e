import math

import pytest
import torch

from fedge.errors import ConfigError
from fedge.fl.server_opt import ServerOptimizer

W = {"w": torch.tensor([1.0, -2.0])}
D = {"w": torch.tensor([0.5, 0.1])}


def test_plain_sgd_is_w_plus_delta():
    opt = ServerOptimizer()
    new, state = opt.step(W, D, opt.init(W))
    assert new["w"].tolist() == pytest.approx([1.5, -1.9])
    assert state == {}


def test_server_momentum_by_hand():
    opt = ServerOptimizer("sgd", lr=0.5, momentum=0.9)
    state = opt.init(W)
    w1, state = opt.step(W, D, state)  # v = D; w = W + 0.5 D
    w2, state = opt.step(w1, D, state)  # v = 0.9 D + D; w = w1 + 0.5 * 1.9 D
    assert w2["w"].tolist() == pytest.approx([1 + 0.25 + 0.475, -2 + 0.05 + 0.095])


@pytest.mark.parametrize("kind", ["adagrad", "adam", "yogi"])
def test_adaptive_first_step_by_hand(kind):
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = ServerOptimizer(kind, lr=lr, beta1=b1, beta2=b2, tau=tau)
    new, state = opt.step(W, D, opt.init(W))
    for i, (w, d) in enumerate(zip(W["w"].tolist(), D["w"].tolist(), strict=True)):
        m = (1 - b1) * d
        v0 = tau**2
        v = {
            "adagrad": v0 + d * d,
            "adam": b2 * v0 + (1 - b2) * d * d,
            "yogi": v0 - (1 - b2) * d * d * math.copysign(1, v0 - d * d),
        }[kind]
        assert new["w"][i].item() == pytest.approx(w + lr * m / (math.sqrt(v) + tau), rel=1e-5)
        assert state["opt.v"]["w"][i].item() == pytest.approx(v, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"lr": 0.0}, {"momentum": 1.0}, {"kind": "adam", "tau": 0.0}, {"beta2": -0.1}]
)
def test_bad_server_optimizers_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        ServerOptimizer(**kwargs)
