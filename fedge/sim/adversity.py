"""What goes wrong in a real federation, simulated: malicious clients and stragglers.

Both are off by default and exist for evaluation only. Every draw depends only on the
experiment seed (and round), so runs stay reproducible and engine-independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from fedge.config import AttackConfig
from fedge.fl.types import ClientTask, ClientUpdate

__all__ = ["attack_update", "flip_labels", "malicious_clients", "straggler_budgets"]


def malicious_clients(num_clients: int, fraction: float, *, seed: int) -> frozenset[int]:
    """A fixed set of ``max(1, round(fraction·N))`` attacker indices."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBAD]))
    count = min(num_clients, max(1, round(fraction * num_clients)))
    return frozenset(int(k) for k in rng.choice(num_clients, size=count, replace=False))


def flip_labels(y: torch.Tensor, rows: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """A copy of ``y`` where the given rows get label C−1−y (label flipping)."""
    poisoned = y.clone()
    if rows:
        idx = torch.cat(list(rows))
        poisoned[idx] = num_classes - 1 - y[idx]
    return poisoned


def attack_update(
    update: ClientUpdate, task: ClientTask, attack: AttackConfig, *, seed: int
) -> ClientUpdate:
    """The update a malicious client reports instead of its honest one.

    ``sign_flip``: w − s·Δ (s = 1 unless ``scale`` is set); ``scale``: w + s·Δ (s = 10
    unless set; model replacement); ``gaussian``: w + N(0, std²). ``label_flip`` changes
    the client's data, not its update, and returns the update unchanged.
    """
    x = task.params
    if attack.kind == "label_flip":
        return update
    if attack.kind == "gaussian":
        state = np.random.SeedSequence([seed, task.round, update.client, 0xA77])
        gen = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
        params = {
            k: w + attack.std * torch.randn(w.shape, generator=gen, dtype=w.dtype)
            for k, w in x.items()
        }
    else:
        s = attack.scale or (1.0 if attack.kind == "sign_flip" else 10.0)
        s = -s if attack.kind == "sign_flip" else s
        params = {k: w + s * (update.params[k] - w) for k, w in x.items()}
    return replace(update, params=params)


def straggler_budgets(
    clients: Sequence[int], fraction: float, full_steps: Sequence[int], *, seed: int, round: int
) -> dict[int, int]:
    """Local-step budgets of this round's stragglers: ``⌊fraction·K⌋`` of the ``K`` sampled
    clients (as in the FedProx code), each with a uniform budget in [1, S_k) where S_k is
    its full local work (1 when S_k = 1)."""
    count = int(fraction * len(clients))
    if count == 0:
        return {}
    rng = np.random.default_rng(np.random.SeedSequence([seed, round, 0x57A6]))
    chosen = rng.choice(len(clients), size=count, replace=False)
    return {
        int(clients[i]): int(rng.integers(1, full_steps[i])) if full_steps[i] > 1 else 1
        for i in sorted(chosen)
    }
