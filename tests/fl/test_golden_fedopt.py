"""Server optimizers over several rounds, against numbers by hand and a few-line reference.

FedAvgM (Hsu et al. 2019): v ← μ·v + Δ, w ← w + η·v. FedAdagrad, FedAdam and FedYogi
(Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2, no bias
correction): m ← β1·m + (1−β1)·Δ and v ← v + Δ² (Adagrad), β2·v + (1−β2)·Δ² (Adam),
v − (1−β2)·Δ²·sign(v − Δ²) (Yogi), from m = 0 and v = τ²; then w ← w + η·m/(√v + τ).

Each round a different subset of clients reports, with different sample counts, so Δ is
the sample-weighted mean of their deltas against the *current* global model.
"""

import math

import pytest
import torch

from fedge.fl.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedge.fl.types import ClientUpdate

W0 = [1.0, -2.0]
# per round: (n_k, offset of w_k from the current global model) of the clients that report
ROUNDS = [
    [(1, [0.5, 1.0]), (3, [0.5, -0.4])],  # Δ1 = [0.5, -0.05]
    [(3, [0.02, 0.8]), (1, [-0.02, 0.4])],  # Δ2 = [0.01, 0.7]
    [(2, [-0.3, 0.1]), (2, [0.1, 0.1])],  # Δ3 = [-0.1, 0.1]
]
DELTAS = [[0.5, -0.05], [0.01, 0.7], [-0.1, 0.1]]
# Tolerances: fedge works in float32, where a delta taken against a global model of size ~2
# carries ~1e-7 of rounding, i.e. ~1e-6 relative on the smallest numbers below; the
# mutations tried (Yogi's sign, a swapped beta, dampened momentum, a delta 0.1% short)
# move some number by 1e-4 relative or more.


def _updates(state, clients):
    return [
        ClientUpdate(k, {"w": state.params["w"] + torch.tensor(off)}, num_samples=n, num_steps=1)
        for k, (n, off) in enumerate(clients)
    ]


def _run(strategy, deltas=None):
    """fedge over the three rounds: (params, extras) after each round; each round's
    combined delta is appended to ``deltas``."""
    state = strategy.init({"w": torch.tensor(W0)})
    out = []
    for clients in ROUNDS:
        updates = _updates(state, clients)
        if deltas is not None:
            deltas.append(strategy.combine(state, updates)["w"].tolist())
        state = strategy.aggregate(state, iter(updates))
        out.append((state.params["w"].tolist(), state.extras))
    return out


@pytest.mark.parametrize("strategy", [FedAvgM, FedAdam])
def test_each_rounds_delta_is_the_weighted_mean_against_the_current_model(strategy):
    deltas = []
    _run(strategy(), deltas)
    for r in range(3):
        assert deltas[r] == pytest.approx(DELTAS[r], abs=1e-6), r


def test_fedavgm_server_momentum_over_three_rounds_by_hand():
    out = _run(FedAvgM(server_lr=0.5, server_momentum=0.9))
    # v1 = Δ1 = [0.5, -0.05];           w1 = [1.25, -2.025]
    # v2 = 0.9·v1 + Δ2 = [0.46, 0.655];  w2 = [1.48, -1.6975]
    # v3 = 0.9·v2 + Δ3 = [0.314, 0.6895]; w3 = [1.637, -1.35275]
    v = [[0.5, -0.05], [0.46, 0.655], [0.314, 0.6895]]
    w = [[1.25, -2.025], [1.48, -1.6975], [1.637, -1.35275]]
    for r, (params, extras) in enumerate(out):
        assert params == pytest.approx(w[r], rel=1e-5), r
        assert extras["opt.v"]["w"].tolist() == pytest.approx(v[r], rel=1e-5), r


def _reference(kind, lr, b1, b2, tau):
    """Algorithm 2 of Reddi et al., coordinate by coordinate in plain Python floats."""
    w, m, v, out = list(W0), [0.0, 0.0], [tau**2, tau**2], []
    for d in DELTAS:
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * d[i]
            sq = d[i] * d[i]
            if kind == "adagrad":
                v[i] = v[i] + sq
            elif kind == "adam":
                v[i] = b2 * v[i] + (1 - b2) * sq
            else:
                v[i] = v[i] - (1 - b2) * sq * math.copysign(1.0, v[i] - sq)
            w[i] = w[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
        out.append((list(w), list(m), list(v)))
    return out


# distinct, non-default betas and tau so a swapped or ignored hyper-parameter shows
HYPER = {"server_lr": 0.1, "beta1": 0.8, "beta2": 0.95, "tau": 1e-2}


@pytest.mark.parametrize(
    ("strategy", "kind"), [(FedAdagrad, "adagrad"), (FedAdam, "adam"), (FedYogi, "yogi")]
)
def test_adaptive_server_optimizers_over_three_rounds_match_the_reference(strategy, kind):
    out = _run(strategy(**HYPER))
    ref = _reference(kind, 0.1, 0.8, 0.95, 1e-2)
    for r, ((params, extras), (w, m, v)) in enumerate(zip(out, ref, strict=True)):
        assert extras["opt.m"]["w"].tolist() == pytest.approx(m, rel=1e-5), (r, "m")
        assert extras["opt.v"]["w"].tolist() == pytest.approx(v, rel=1e-5), (r, "v")
        assert params == pytest.approx(w, rel=1e-5), (r, "w")


def test_fedadam_moments_after_steps_one_and_two_by_hand():
    (_, e1), (_, e2), _ = _run(FedAdam(**HYPER))
    # m1 = 0.2·Δ1 = [0.1, -0.01];  v1 = 0.95·1e-4 + 0.05·Δ1² = [0.012595, 0.000220]
    assert e1["opt.m"]["w"].tolist() == pytest.approx([0.1, -0.01], rel=1e-5)
    assert e1["opt.v"]["w"].tolist() == pytest.approx([0.012595, 0.000220], rel=1e-5)
    # m2 = 0.8·m1 + 0.2·Δ2 = [0.082, 0.132]
    # v2 = 0.95·v1 + 0.05·Δ2² = [0.01197025, 0.024709]
    assert e2["opt.m"]["w"].tolist() == pytest.approx([0.082, 0.132], rel=1e-5)
    assert e2["opt.v"]["w"].tolist() == pytest.approx([0.01197025, 0.024709], rel=1e-5)


def test_fedyogi_sign_term_shrinks_v_only_where_v_exceeds_delta_squared():
    (_, e1), (_, e2), _ = _run(FedYogi(**HYPER))
    # step 1: v0 = τ² = 1e-4 < Δ1², so v grows: v1 = 1e-4 + 0.05·Δ1² = [0.0126, 0.000225]
    assert e1["opt.v"]["w"].tolist() == pytest.approx([0.0126, 0.000225], rel=1e-5)
    # step 2, Δ2² = [1e-4, 0.49]: coordinate 0 has v1 > Δ2², so sign(v − Δ²) = +1 and
    # v shrinks, v2 = 0.0126 − 0.05·1e-4 = 0.012595 (Adam would give 0.011975);
    # coordinate 1 has v1 < Δ2² and v grows, v2 = 0.000225 + 0.05·0.49 = 0.024725
    assert e2["opt.v"]["w"].tolist() == pytest.approx([0.012595, 0.024725], rel=1e-5)
    assert e2["opt.m"]["w"].tolist() == pytest.approx([0.082, 0.132], rel=1e-5)


def test_fedadagrad_accumulates_squared_deltas():
    (_, e1), (_, e2), (_, e3) = _run(FedAdagrad(**HYPER))
    # v_t = τ² + Σ_s Δ_s²
    assert e1["opt.v"]["w"].tolist() == pytest.approx([0.2501, 0.0026], rel=1e-5)
    assert e2["opt.v"]["w"].tolist() == pytest.approx([0.2502, 0.4926], rel=1e-5)
    assert e3["opt.v"]["w"].tolist() == pytest.approx([0.2602, 0.5026], rel=1e-5)
