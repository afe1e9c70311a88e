"""Whole simulations against an independent reference, engine by engine.

The engines are otherwise tested against the sequential engine, so a bug they all share
would pass. Here each engine's final global model after three rounds of a digits
experiment (logistic regression, 4 of 8 clients per round, minibatches, local momentum) is
compared with a NumPy reference that redoes the rounds from the written semantics: local
SGD as in :mod:`fedge.fl.local`, then FedAvg's Σ n_k·w_k / Σ n_k, or SCAFFOLD's option II
(Karimireddy et al. 2020) with c ← c + Σ Δc_i / N. Only the random draws are taken from
fedge (which clients, initial weights, each client's batch order), since they are
conventions, not algorithms.
"""

import math

import numpy as np
import pytest
import torch

from fedge.fl.local import client_generator
from fedge.fl.sampling import sample_clients
from fedge.models.spec import build_model
from fedge.sim.experiment import prepare, run

LR, MOMENTUM, BATCH, ROUNDS = 0.1, 0.5, 16, 3


def _local_sgd(w, x, y, gen, drift=None):
    """One epoch of minibatch SGD with momentum on softmax regression, in float64; the
    drift (SCAFFOLD's c − c_i) is subtracted after each step, outside the momentum."""
    n = len(y)
    order = torch.randperm(n, generator=gen).numpy()
    steps = math.ceil(n / BATCH)
    buf = None
    for t in range(steps):
        idx = order[t * BATCH : (t + 1) * BATCH]
        z = x[idx] @ w["weight"].T + w["bias"]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(idx)), y[idx]] -= 1.0
        p /= len(idx)
        g = {"weight": p.T @ x[idx], "bias": p.sum(axis=0)}
        buf = g if buf is None else {k: MOMENTUM * buf[k] + g[k] for k in g}
        w = {k: w[k] - LR * buf[k] - (LR * drift[k] if drift is not None else 0) for k in w}
    return w, steps


def _reference(fed, strategy):
    cfg = fed.config
    model = build_model(fed.spec, seed=cfg.seed)
    x = {k.split(".")[-1]: p.detach().double().numpy() for k, p in model.named_parameters()}
    data = []
    for k in range(fed.clients.num_clients):
        xs, ys = fed.clients.client(k)
        data.append((xs.reshape(len(ys), -1).double().numpy(), ys.numpy()))
    num = fed.clients.num_clients
    c = {k: np.zeros_like(v) for k, v in x.items()}
    c_i = {}
    for r in range(1, ROUNDS + 1):
        cohort = [int(k) for k in sample_clients(num, fed.cohort, seed=cfg.seed, round=r)]
        ws, ns, dcs = [], [], []
        for k in cohort:
            gen = client_generator(cfg.seed, r, k)
            if strategy == "fedavg":
                w, _ = _local_sgd(x, *data[k], gen)
            else:
                ci = c_i.get(k, {key: np.zeros_like(v) for key, v in x.items()})
                w, steps = _local_sgd(x, *data[k], gen, {key: c[key] - ci[key] for key in x})
                new = {key: ci[key] - c[key] + (x[key] - w[key]) / (steps * LR) for key in x}
                dcs.append({key: new[key] - ci[key] for key in x})
                c_i[k] = new
            ws.append(w)
            ns.append(len(data[k][1]))
        # with server lr 1, x + Σ p_k (w_k − x) is the weighted mean of the client models
        x = {key: sum(n * w[key] for n, w in zip(ns, ws, strict=True)) / sum(ns) for key in x}
        c = {key: c[key] + sum(d[key] for d in dcs) / num for key in x}
    return x, c


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_engine_matches_the_independent_reference(digits, engine, strategy):
    config = digits(
        rounds=ROUNDS,
        engine=engine,
        model={"preset": "logreg"},
        client={"epochs": 1, "batch_size": BATCH, "lr": LR, "momentum": MOMENTUM},
        strategy={"name": strategy},
    )
    fed = prepare(config)
    state = run(fed).state
    x, c = _reference(fed, strategy)
    # float32 training vs the float64 reference differ by ~1e-7 here (weights ~0.4, c ~0.08)
    for key, ref in x.items():
        np.testing.assert_allclose(
            state.params[f"dense1.{key}"].numpy(), ref, rtol=1e-5, atol=1e-6, err_msg=key
        )
    if strategy == "scaffold":
        for key, ref in c.items():
            np.testing.assert_allclose(
                state.extras["c"][f"dense1.{key}"].numpy(), ref, rtol=1e-5, atol=1e-6
            )
        assert float(np.abs(c["weight"]).max()) > 0.01  # the control variates are not ~0
