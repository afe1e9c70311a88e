"""An independent reference for golden-number tests of the strategies' client halves.

:func:`reference_sgd` is local SGD on a linear softmax model written from the documented
semantics of :mod:`fedge.fl.local` with NumPy in float64: the cross-entropy gradient by
hand, PyTorch-style momentum (``buf = g`` at the first step, then ``buf = ρ·buf + g``),
weight decay and extra gradient terms inside momentum, a drift subtracted outside it. It
shares no code with fedge; only the batch order is drawn the documented way (one
``torch.randperm(n)`` per epoch from the client's generator), so that minibatch runs can be
compared step for step.
"""

import math

import numpy as np
import pytest
import torch

from fedge.fl.local import LocalTraining, train_client
from fedge.fl.types import ClientTask, ClientUpdate

FEATURES, CLASSES = 3, 3
SIZES = (5, 7, 4, 6)  # four clients; with batch 3: 2, 3, 2, 2 steps per epoch


def reference_sgd(
    params,
    x,
    y,
    *,
    lr,
    seed,
    epochs=1,
    batch_size=None,
    momentum=0.0,
    weight_decay=0.0,
    max_steps=None,
    grad_term=None,
    drift=None,
):
    """Local SGD from ``params`` ({"weight": (C, D), "bias": (C,)}); returns (params, steps).

    ``grad_term(w)`` is added to every gradient (inside momentum); ``drift`` is subtracted,
    times ``lr``, after every step (outside momentum).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    b = n if batch_size is None else min(batch_size, n)
    per_epoch = math.ceil(n / b)
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = None
    for t in range(steps):
        if t % per_epoch == 0:
            order = torch.randperm(n, generator=gen).numpy()
        idx = order[(t % per_epoch) * b :][:b]
        z = x[idx] @ w["weight"].T + w["bias"]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(idx)), y[idx]] -= 1.0  # d(mean CE)/dz = (softmax − onehot)/B
        p /= len(idx)
        g = {"weight": p.T @ x[idx], "bias": p.sum(axis=0)}
        extra = grad_term(w) if grad_term is not None else {}
        g = {k: g[k] + weight_decay * w[k] + extra.get(k, 0.0) for k in w}
        buf = g if buf is None else {k: momentum * buf[k] + g[k] for k in w}
        w = {k: w[k] - lr * buf[k] for k in w}
        if drift is not None:
            w = {k: w[k] - lr * drift[k] for k in w}
    return w, steps


@pytest.fixture
def reference():
    """The reference local SGD (see the module docstring)."""
    return reference_sgd


@pytest.fixture
def linear_clients():
    """Four clients' (x, y) as float32/int64 tensors and an initial linear model (float64
    NumPy), all from one fixed seed."""
    rng = np.random.default_rng(7)
    data = [
        (
            torch.from_numpy(rng.normal(size=(n, FEATURES)).astype(np.float32)),
            torch.from_numpy(rng.integers(0, CLASSES, size=n)),
        )
        for n in SIZES
    ]
    w0 = {
        "weight": rng.normal(scale=0.5, size=(CLASSES, FEATURES)).astype(np.float32),
        "bias": rng.normal(scale=0.1, size=CLASSES).astype(np.float32),
    }
    return data, {k: v.astype(np.float64) for k, v in w0.items()}


def run_client(
    strategy, task: ClientTask, x, y, local: LocalTraining, *, seed, client_index, max_steps=None
) -> ClientUpdate:
    """fedge's local training of one client on a ``torch.nn.Linear`` model."""
    model = torch.nn.Linear(x.shape[1], CLASSES)
    gen = torch.Generator().manual_seed(seed)
    return train_client(
        model, strategy, task, x, y, local, gen, client_index=client_index, max_steps=max_steps
    )


def run_cohort(strategy, task: ClientTask, data, local: LocalTraining, cohort, round, budgets=None):
    """:func:`run_client` for each client of ``cohort`` in ``round`` (client k seeded with
    100·round + k; ``budgets`` maps (round, k) to a straggler's step budget)."""
    budgets = budgets or {}
    return [
        run_client(
            strategy,
            task,
            *data[k],
            local,
            seed=100 * round + k,
            client_index=k,
            max_steps=budgets.get((round, k)),
        )
        for k in cohort
    ]


@pytest.fixture
def fedge_cohort():
    """:func:`run_cohort`: one round of fedge's local training over a cohort."""
    return run_cohort


@pytest.fixture
def fedge_client():
    """fedge's ``train_client`` on a linear model with a generator seeded by ``seed``."""
    return run_client
