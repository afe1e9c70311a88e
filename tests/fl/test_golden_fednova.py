"""FedNova with unequal local steps and local momentum, by hand and against the reference.

Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020: client k's local SGD with momentum ρ puts weight
Σ_{s=t}^{τ_k−1} ρ^{s−t} on its t-th gradient; a_k is the sum of those weights. The server
averages the normalized deltas (y_k − x)/a_k with p_k = n_k/Σn and steps by
τ_eff = Σ p_k·a_k: x ← x + τ_eff·Σ p_k·(y_k − x)/a_k.
"""

import numpy as np
import pytest
import torch

from fedge.fl.local import LocalTraining
from fedge.fl.strategy import FedNova
from fedge.fl.types import ClientUpdate, ServerState


def _a(steps, rho):
    """a_k by brute force: the momentum weights of every local gradient, summed."""
    return sum(sum(rho ** (s - t) for s in range(t, steps)) for t in range(steps))


def test_unequal_steps_with_momentum_by_hand():
    # ρ = 0.5: a = 1.5 + 1 = 2.5 for τ = 2, a = 1.75 + 1.5 + 1 = 4.25 for τ = 3
    x = {"w": torch.tensor([1.0, 2.0])}
    ups = [
        ClientUpdate(0, {"w": torch.tensor([2.0, 2.0])}, num_samples=10, num_steps=2),
        ClientUpdate(1, {"w": torch.tensor([1.0, 6.25])}, num_samples=30, num_steps=3),
    ]
    new = FedNova(momentum=0.5).aggregate(ServerState(params=x), ups)
    # p = (1/4, 3/4); normalized deltas (1, 0)/2.5 = (0.4, 0) and (0, 4.25)/4.25 = (0, 1);
    # their mean (0.1, 0.75); τ_eff = 2.5/4 + 3·4.25/4 = 3.8125
    # x ← (1, 2) + 3.8125·(0.1, 0.75) = (1.38125, 4.859375)
    assert new.params["w"].tolist() == pytest.approx([1.38125, 4.859375], rel=1e-6)
    assert x["w"].tolist() == [1.0, 2.0] and ups[1].params["w"].tolist() == [1.0, 6.25]


COHORTS = [(0, 1, 2), (1, 3)]
RHO = 0.5
# batch 3 over 5, 7, 4, 6 examples in 2 epochs: 4, 6, 4, 4 steps; two stragglers stop early
LOCAL = LocalTraining(epochs=2, batch_size=3, lr=0.2, momentum=RHO)
BUDGETS = {(1, 1): 5, (2, 3): 1}


def test_two_rounds_with_stragglers_and_momentum_match_the_reference(
    linear_clients, reference, fedge_cohort
):
    data, x = linear_clients
    strategy = FedNova(momentum=RHO)
    state = strategy.init({k: torch.tensor(v, dtype=torch.float32) for k, v in x.items()})
    steps = []
    for r, cohort in enumerate(COHORTS, start=1):
        task = strategy.client_task(state)
        updates = fedge_cohort(strategy, task, data, LOCAL, cohort, r, BUDGETS)
        state = strategy.aggregate(state, iter(updates))

        trained = [
            reference(
                x,
                *data[k],
                lr=0.2,
                epochs=2,
                batch_size=3,
                momentum=RHO,
                seed=100 * r + k,
                max_steps=BUDGETS.get((r, k)),
            )
            for k in cohort
        ]
        n = np.array([len(data[k][1]) for k in cohort], dtype=np.float64)
        p = n / n.sum()
        a = [_a(tau, RHO) for _, tau in trained]
        tau_eff = sum(p_k * a_k for p_k, a_k in zip(p, a, strict=True))
        x = {
            key: x[key]
            + tau_eff
            * sum(
                p_k * (y[key] - x[key]) / a_k
                for p_k, a_k, (y, _) in zip(p, a, trained, strict=True)
            )
            for key in x
        }
        steps.append([u.num_steps for u in updates])
        assert steps[-1] == [tau for _, tau in trained]
        for k in x:
            np.testing.assert_allclose(state.params[k].numpy(), x[k], rtol=1e-5, atol=1e-6)
    assert steps == [[4, 5, 4], [6, 1]]
