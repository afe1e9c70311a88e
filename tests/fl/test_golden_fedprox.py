"""FedProx's client half by hand and against the independent reference.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020: client k
minimizes F_k(w) + μ/2·‖w − w_global‖², so every local gradient gains μ·(w − w_global),
which (like any gradient) goes through the client's momentum.
"""

import math

import numpy as np
import pytest
import torch

from fedge.fl.local import LocalTraining, train_client
from fedge.fl.strategy import FedProx
from fedge.fl.types import ClientTask


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_two_local_steps_with_the_proximal_gradient_by_hand(momentum):
    # logits = W·x for W of shape (2, 1), one example x = 2 of class 0, from W = [1, 1]
    mu, lr = 0.4, 0.5
    w_global = {"weight": torch.tensor([[1.0], [1.0]])}
    model = torch.nn.Linear(1, 2, bias=False)
    local = LocalTraining(epochs=2, batch_size=None, lr=lr, momentum=momentum)
    update = train_client(
        model,
        FedProx(mu=mu),
        ClientTask(1, w_global),
        torch.tensor([[2.0]]),
        torch.tensor([0]),
        local,
        torch.Generator().manual_seed(0),
    )
    # step 1: logits (2, 2), softmax (1/2, 1/2); dCE/dW = (p − onehot)·x = (−1, 1);
    # w = w_global so the proximal term is 0: W1 = (1, 1) − 0.5·(−1, 1) = (1.5, 0.5)
    g1 = [-1.0, 1.0]
    # step 2: logits (3, 1), p_0 = σ(2); dCE/dW = (−2(1 − σ(2)), 2(1 − σ(2)));
    # proximal gradient μ(W1 − w_global) = 0.4·(0.5, −0.5) = (0.2, −0.2)
    s = 1 / (1 + math.exp(-2.0))
    g2 = [-2 * (1 - s) + 0.2, 2 * (1 - s) - 0.2]
    w2 = [w1 - lr * (momentum * a + b) for w1, a, b in zip([1.5, 0.5], g1, g2, strict=True)]
    assert update.num_steps == 2
    # without the proximal term (or with its sign flipped) W2 would be off by 0.1 (0.2)
    assert update.params["weight"].reshape(-1).tolist() == pytest.approx(w2, abs=1e-6)
    assert w_global["weight"].reshape(-1).tolist() == [1.0, 1.0]  # the task is not touched


COHORTS = [(1, 3), (0, 1, 2)]
MU = 0.3
LOCAL = LocalTraining(epochs=2, batch_size=3, lr=0.3, momentum=0.5)
BUDGETS = {(2, 1): 3}  # client 1 is a straggler in round 2: 3 of its 6 steps


def test_two_rounds_with_a_straggler_match_the_reference(linear_clients, reference, fedge_cohort):
    data, x = linear_clients
    strategy = FedProx(mu=MU)
    state = strategy.init({k: torch.tensor(v, dtype=torch.float32) for k, v in x.items()})
    for r, cohort in enumerate(COHORTS, start=1):
        task = strategy.client_task(state)
        updates = fedge_cohort(strategy, task, data, LOCAL, cohort, r, BUDGETS)
        state = strategy.aggregate(state, iter(updates))

        def prox(w, x=x):
            return {k: MU * (w[k] - x[k]) for k in w}

        trained = [
            reference(
                x,
                *data[k],
                lr=0.3,
                epochs=2,
                batch_size=3,
                momentum=0.5,
                seed=100 * r + k,
                max_steps=BUDGETS.get((r, k)),
                grad_term=prox,
            )
            for k in cohort
        ]
        n = [len(data[k][1]) for k in cohort]
        x = {
            key: sum(n_k * w[key] for n_k, (w, _) in zip(n, trained, strict=True)) / sum(n)
            for key in x
        }
        assert [u.num_steps for u in updates] == [steps for _, steps in trained]
        for u, (w, _) in zip(updates, trained, strict=True):
            for k in w:
                np.testing.assert_allclose(u.params[k].numpy(), w[k], rtol=1e-5, atol=1e-6)
        for k in x:
            np.testing.assert_allclose(state.params[k].numpy(), x[k], rtol=1e-5, atol=1e-6)
    assert [u.num_steps for u in updates] == [4, 3, 4]
