"""Local differential privacy: every client clips its own delta and adds the noise before
the update leaves it, so that not even the server sees it in the clear.

Each client k of round r sends w + clip(Δ_k, C) + N(0, (z·C)² I), the noise drawn from a
stream of (seed, round, client) alone (:func:`client_noise_generator`): the same in every
engine, and on a device. The server averages the noisy updates with equal weights (a
client's sample count is its own data too) — post-processing, which costs no privacy, so
any aggregator may follow.

On a deployment (``fedge server``) the task tells each device C and z
(:class:`~fedge.federation.protocol.LocalDPSettings`) and the device draws its noise from
its operating system's entropy (:func:`device_normal`), which nobody else can reproduce:
the simulation's streams are for reproducible experiments, not for hiding anything.

The guarantee is per client and against everyone, the server included: a client's update
in one round is a Gaussian mechanism with noise z times its clipping norm, whatever the
other clients do, and a client that takes part in r rounds composes r of them
(:class:`~fedge.privacy.ledger.PrivacyLedger` with ``local=True``, which reports the
worst case, a client in every round: the server knows who took part, so sampling does
not amplify anything). The price is the noise: the average of m noisy updates carries
noise of std z·C/√m, against z·C/m for central noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedge.errors import ConfigError
from fedge.fl.strategy import FedNova, Scaffold, Strategy, Wrapper
from fedge.fl.types import (
    ClientTask,
    ClientUpdate,
    Params,
    ServerState,
    flatten_by_name,
    unflatten_by_name,
)

if TYPE_CHECKING:
    from fedge.fl.local import LocalTraining

__all__ = ["LocalDP", "client_noise_generator", "device_normal", "privatize"]


def client_noise_generator(seed: int, round: int, client: int | str) -> torch.Generator:
    """Client ``client``'s noise stream in ``round``."""
    key = client if isinstance(client, int) else int.from_bytes(client.encode()[:8], "little")
    state = np.random.SeedSequence([seed, round, key, 0x10CA1]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def device_normal(count: int) -> torch.Tensor:
    """``count`` standard normal float64 draws from a generator seeded by the operating
    system's entropy (128 bits): a device's noise, which the server cannot regenerate."""
    return torch.from_numpy(np.random.default_rng().standard_normal(count))


def privatize(
    task: ClientTask,
    update: ClientUpdate,
    *,
    clip_norm: float,
    noise_multiplier: float,
    normal: Callable[[int], torch.Tensor],
) -> ClientUpdate:
    """``update`` with its delta from ``task.params`` clipped to L2 norm ``clip_norm`` C and
    N(0, (z·C)² I) added, ``normal(n)`` giving the n standard normal draws."""
    start = flatten_by_name(task.params).to(torch.float64)
    delta = flatten_by_name(update.params, task.params).to(torch.float64) - start
    norm = float(delta.norm())
    if norm > clip_norm:
        delta = delta * (clip_norm / norm)
    noise = normal(delta.numel())
    noisy = start + delta + noise * (noise_multiplier * clip_norm)
    return replace(update, params=unflatten_by_name(noisy, update.params))


class LocalDP(Wrapper):
    """``inner`` with local DP: clients clip to ``clip_norm`` C and add N(0, (z·C)² I)."""

    def __init__(self, inner: Strategy, *, noise_multiplier: float, clip_norm: float, seed: int):
        if isinstance(inner, Scaffold | FedNova):
            raise ConfigError(
                f"local differential privacy does not support {inner.name}: it reports "
                "more than its weights (SCAFFOLD) or rescales them (FedNova) outside the noise"
            )
        if not noise_multiplier > 0 or not clip_norm > 0:
            raise ConfigError("local DP needs a positive noise multiplier and clipping norm")
        super().__init__(inner)
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"LocalDP({self.inner!r}, noise_multiplier={self.noise_multiplier}, "
            f"clip_norm={self.clip_norm})"
        )

    def finish_client(
        self, task: ClientTask, update: ClientUpdate, local: LocalTraining
    ) -> ClientUpdate:
        """The wrapped client half, then the clipping and the noise, on the client."""
        update = self.inner.finish_client(task, update, local)
        generator = client_noise_generator(self.seed, task.round, update.client)
        return privatize(
            task,
            update,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            normal=lambda n: torch.randn(n, generator=generator, dtype=torch.float64),
        )

    def client_deltas(
        self, state: ServerState, updates: Iterable[ClientUpdate]
    ) -> Iterator[tuple[Params, float]]:
        """Equal weights: a claimed sample count is not protected by the noise."""
        for delta, _ in self.inner.client_deltas(state, updates):
            yield delta, 1.0

    def check_sum_path(self) -> None:
        raise ConfigError(
            "local DP under secure aggregation is distributed DP: use "
            'privacy.dp = "distributed" (clients noise their share before masking) or drop '
            "secure aggregation"
        )
