"""SCAFFOLD over three rounds with partial participation, against the reference.

Karimireddy et al., "SCAFFOLD", ICML 2020, Algorithm 1, option II, written out below with
the reference local SGD: every local step is the SGD-with-momentum step on the loss
gradient followed by y ← y − η·(c − c_i) (the correction outside the momentum, as fedge
documents); then c_i⁺ = c_i − c + (x − y)/(K·η), Δy = y − x, Δc_i = c_i⁺ − c_i; the server
sets x ← x + η_g·Σ n_k·Δy_k / Σ n_k and c ← c + (1/N)·Σ_{i∈S} Δc_i with N the size of the
federation, not of the cohort S.
"""

from dataclasses import replace

import numpy as np
import torch

from fedge.fl.local import LocalTraining
from fedge.fl.strategy import Scaffold

N = 4  # clients in the federation
# client 2 comes back in round 2 with its c_i, client 1 joins when c is no longer 0,
# client 0 returns in round 3 with the c_i of round 1, client 3 never trains
COHORTS = [(0, 2), (1, 2), (2, 0, 1)]
LR, SERVER_LR, MOMENTUM = 0.2, 0.8, 0.5
# batch 3 over 5, 7, 4 examples: K = 2, 3, 2 local steps
LOCAL = LocalTraining(epochs=1, batch_size=3, lr=LR, momentum=MOMENTUM)


def _close(actual, expected, what):
    for k, v in expected.items():
        np.testing.assert_allclose(
            actual[k].numpy(), v, rtol=1e-5, atol=2e-6, err_msg=f"{what} {k}"
        )


def test_three_rounds_with_partial_participation_match_the_reference(
    linear_clients, reference, fedge_client
):
    data, x = linear_clients
    strategy = Scaffold(num_clients=N, server_lr=SERVER_LR)
    state = strategy.init({k: torch.tensor(v, dtype=torch.float32) for k, v in x.items()})
    own = {}  # what each client keeps between its rounds (fedge)
    zeros = {k: np.zeros_like(v) for k, v in x.items()}
    c, c_i = dict(zeros), {}  # the reference's control variates
    for r, cohort in enumerate(COHORTS, start=1):
        task = strategy.client_task(state)
        updates = []
        for k in cohort:
            mine = replace(task, client_state=own.get(k))
            u = fedge_client(strategy, mine, *data[k], LOCAL, seed=100 * r + k, client_index=k)
            own[k] = u.client_state
            updates.append(u)
        state = strategy.aggregate(state, iter(updates))

        dy, dc = [], []
        for k, u in zip(cohort, updates, strict=True):
            ci = c_i.get(k, zeros)
            drift = {key: c[key] - ci[key] for key in x}
            y, steps = reference(
                x, *data[k], lr=LR, batch_size=3, momentum=MOMENTUM, seed=100 * r + k, drift=drift
            )
            ci_new = {key: ci[key] - c[key] + (x[key] - y[key]) / (steps * LR) for key in x}
            dy.append({key: y[key] - x[key] for key in x})
            dc.append({key: ci_new[key] - ci[key] for key in x})
            c_i[k] = ci_new
            assert u.num_steps == steps
            _close(u.params, y, f"round {r} client {k} y")
            _close(u.extras["delta_c"], dc[-1], f"round {r} client {k} Δc_i")
            _close(u.client_state["c"], ci_new, f"round {r} client {k} c_i")
        n = [len(data[k][1]) for k in cohort]
        x = {
            key: x[key] + SERVER_LR * sum(m * d[key] for m, d in zip(n, dy, strict=True)) / sum(n)
            for key in x
        }
        c = {key: c[key] + sum(d[key] for d in dc) / N for key in x}
        _close(state.params, x, f"round {r} x")
        _close(state.extras["c"], c, f"round {r} c")
    assert [u.num_steps for u in updates] == [2, 2, 3]
    assert sorted(own) == [0, 1, 2]  # client 3 never trained and has no c_i
    assert float(np.abs(c["weight"]).max()) > 0.1  # the correction really was exercised
