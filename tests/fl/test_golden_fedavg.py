"""FedAvg against an independent reference: several rounds of real local training.

The reference (``reference`` fixture, NumPy) runs each sampled client's local SGD and
averages the models as McMahan et al. (2017) write it, w ← Σ n_k·w_k / Σ n_k, without the
delta/aggregator/server-optimizer path fedge takes.
"""

import numpy as np
import torch

from fedge.fl.local import LocalTraining
from fedge.fl.strategy import FedAvg

# partial participation: 2, 3 and 2 of the 4 clients; clients 0, 2 and 3 come back
COHORTS = [(0, 2), (1, 2, 3), (3, 0)]
# batch 3 over 5, 7, 4, 6 examples: 4, 6, 4, 4 local steps in 2 epochs (last batch smaller)
LOCAL = LocalTraining(epochs=2, batch_size=3, lr=0.3, momentum=0.5, weight_decay=0.01)


def _close(actual, expected):
    for k, v in expected.items():
        np.testing.assert_allclose(actual[k].numpy(), v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_fedavg_three_rounds_with_partial_participation_match_the_reference(
    linear_clients, reference, fedge_client
):
    data, x = linear_clients
    strategy = FedAvg()
    state = strategy.init({k: torch.tensor(v, dtype=torch.float32) for k, v in x.items()})
    steps = []
    for r, cohort in enumerate(COHORTS, start=1):
        task = strategy.client_task(state)
        updates = [
            fedge_client(strategy, task, *data[k], LOCAL, seed=100 * r + k, client_index=k)
            for k in cohort
        ]
        state = strategy.aggregate(state, iter(updates))

        trained = [
            reference(
                x,
                *data[k],
                lr=0.3,
                epochs=2,
                batch_size=3,
                momentum=0.5,
                weight_decay=0.01,
                seed=100 * r + k,
            )
            for k in cohort
        ]
        n = [len(data[k][1]) for k in cohort]
        x = {
            key: sum(n_k * w[key] for n_k, (w, _) in zip(n, trained, strict=True)) / sum(n)
            for key in x
        }

        steps.append([u.num_steps for u in updates])
        assert steps[-1] == [s for _, s in trained]
        for u, (w, _) in zip(updates, trained, strict=True):
            _close(u.params, w)
        _close(state.params, x)
        assert state.rounds_completed == r
    assert steps == [[4, 4], [6, 4, 4], [4, 4]]
