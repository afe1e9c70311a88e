"""DP-FedAvg: user-level differential privacy, the server adding the noise.

McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
Models". ICLR 2018 (DP-FedAvg with the fixed-denominator estimator).

Each round the server takes the client deltas Δ_k = w_k − w and

1. clips each to L2 norm C: Δ_k · min(1, C/‖Δ_k‖) (a zero delta stays zero);
2. sums them with *equal* weights: weighting by the sample counts n_k that clients claim
   would let one client's influence, hence the sensitivity, grow with its claim;
3. adds Gaussian noise N(0, (z·C)² I) to the sum, from a stream that depends only on the
   experiment seed and the round (:func:`noise_generator`), so that every engine, and a
   server that re-aggregates a round after a restart, draws the same noise;
4. divides by the expected cohort size m (the fixed ``clients_per_round``), not by the
   number of updates that arrived, which the noise does not cover;
5. hands the result to the wrapped strategy's server optimizer (FedAvgM or FedAdam on top
   are post-processing and cost no privacy).

With adaptive clipping (:mod:`fedge.privacy.clipping`) C lives in the server state,
``ServerState.extras["dp"]["clip_norm"]``, so it is saved with the model and survives a
restart, and the sum's multiplier is z_Δ instead of z.

Design: steps 1–4 are an :class:`~fedge.fl.aggregators.Aggregator`, :class:`GaussianSum`,
so they consume the ``(delta, weight)`` stream with one float64 running sum like every
aggregator (memory stays flat as cohorts grow), and the strategies' own aggregation runs
unchanged around it. But an aggregator sees neither the round, nor the seed, nor the
server state, which the noise and adaptive clipping need. So :class:`DPFedAvg` wraps a
strategy: for each round it gives a *copy* of the wrapped strategy a :class:`GaussianSum`
built for that round, delegates to it, then moves C. The wrapped strategy is never
changed, and its client half is passed through untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.aggregators import NormBound, Weighted, WeightedMean
from fedge.fl.strategy import FedNova, Scaffold, Strategy, Wrapper
from fedge.fl.types import (
    ClientTask,
    ClientUpdate,
    Params,
    ServerState,
    flatten,
    flatten_by_name,
    unflatten,
    unflatten_by_name,
)
from fedge.privacy.clipping import AdaptiveClipping, sum_noise_multiplier

if TYPE_CHECKING:
    pass

__all__ = [
    "ClipTally",
    "DPFedAvg",
    "GaussianSum",
    "add_noise",
    "check_dp_inner",
    "clipped_parts",
    "noise_generator",
]

#: Streams of :func:`noise_generator`: the noise on the update sum, on the unclipped count.
SUM_NOISE, COUNT_NOISE = 0, 1


def noise_generator(seed: int, round: int, stream: int = SUM_NOISE) -> torch.Generator:
    """The server's random stream for the DP noise of ``round``.

    Derived from ``(seed, round, stream)`` alone, like
    :func:`fedge.fl.local.client_generator`, so that it does not depend on the engine, on
    the order updates arrive in, or on how often a round is aggregated.
    """
    state = np.random.SeedSequence([seed, round, stream, 0xD9]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class ClipTally:
    """Counts of one round's updates: how many arrived, how many fitted under C."""

    clients: int = 0
    unclipped: int = 0


@dataclass(frozen=True)
class GaussianSum:
    """(Σ_k clip(Δ_k, C) + N(0, σ² I)) / m with a running float64 sum; weights ignored.

    Parameters
    ----------
    clip_norm:
        C, the L2 bound of every delta.
    noise_std:
        σ, the absolute std of the noise on the sum (z·C); 0 adds none.
    expected_clients:
        m, the denominator.
    seed, round:
        Select the noise stream (:func:`noise_generator`).
    tally:
        If given, receives the number of updates and of unclipped ones (‖Δ_k‖ ≤ C).
    """

    clip_norm: float
    noise_std: float
    expected_clients: int
    seed: int = 0
    round: int = 0
    tally: ClipTally | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"clipping norm must be positive, got {self.clip_norm}")
        if not self.noise_std >= 0:
            raise ConfigError(f"noise std must be >= 0, got {self.noise_std}")
        if self.expected_clients < 1:
            raise ConfigError(f"expected clients must be >= 1, got {self.expected_clients}")

    def __call__(self, deltas: Weighted) -> Params:
        total: torch.Tensor | None = None
        like: Params = {}
        for delta, _weight in deltas:
            flat = flatten(delta).to(torch.float64)
            norm = float(flat.norm())
            fits = norm <= self.clip_norm  # also a zero delta: no division by its norm
            scale = 1.0 if fits else self.clip_norm / norm
            if total is None:
                like, total = delta, flat.mul_(scale)
            else:
                total.add_(flat, alpha=scale)
            if self.tally is not None:
                self.tally.clients += 1
                self.tally.unclipped += int(fits)
        if total is None:
            raise FedgeError("no client update to aggregate in this round")
        add_noise(total, self.noise_std, self.seed, self.round)
        return unflatten(total / self.expected_clients, like)


def clipped_parts(
    task: ClientTask, update: ClientUpdate, clip_norm: float, *, count_unclipped: bool
) -> dict[str, torch.Tensor]:
    """What a client adds to a DP round's secure sum: its delta clipped to ``clip_norm``
    (weight 1), and 1 if it fitted under the norm when ``count_unclipped``."""
    mine = flatten_by_name(update.params, task.params).to(torch.float64)
    delta = mine - flatten_by_name(task.params).to(torch.float64)
    norm = float(delta.norm())
    fits = norm <= clip_norm
    parts = {"delta": delta if fits else delta * (clip_norm / norm)}
    if count_unclipped:
        parts["unclipped"] = torch.tensor([float(fits)], dtype=torch.float64)
    return parts


def add_noise(total: torch.Tensor, std: float, seed: int, round: int) -> None:
    """Add N(0, std² I) from the round's sum-noise stream to the float64 ``total``."""
    if std > 0:
        generator = noise_generator(seed, round, SUM_NOISE)
        noise = torch.randn(total.numel(), generator=generator, dtype=torch.float64)
        total.add_(noise, alpha=std)


class DPFedAvg(Wrapper):
    """A strategy with DP-FedAvg's clipping and noise on its aggregation.

    Parameters
    ----------
    inner:
        The strategy to privatize (FedAvg, FedAvgM, FedOpt or FedProx) with the mean
        aggregator; its server optimizer applies the noisy average.
    noise_multiplier:
        z, noise std relative to the clipping norm (the total, with adaptive clipping).
    expected_clients:
        m, the cohort size the noisy sum is divided by.
    seed:
        The experiment seed the noise streams derive from.
    clip_norm:
        A fixed clipping norm S; give it or ``adaptive``.
    adaptive:
        Adaptive clipping from ``adaptive.initial_norm`` (:mod:`fedge.privacy.clipping`).
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        noise_multiplier: float,
        expected_clients: int,
        seed: int,
        clip_norm: float | None = None,
        adaptive: AdaptiveClipping | None = None,
    ):
        check_dp_inner(inner)
        if adaptive is not None and clip_norm is None:
            clip_norm = adaptive.initial_norm
        elif (adaptive is None) == (clip_norm is None):
            raise ConfigError("give exactly one of a fixed clipping norm and adaptive clipping")
        if not noise_multiplier >= 0:
            raise ConfigError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        if expected_clients < 1:
            raise ConfigError(f"expected clients must be >= 1, got {expected_clients}")
        super().__init__(inner)
        self.noise_multiplier = noise_multiplier
        self.expected_clients = expected_clients
        self.seed = seed
        #: S, or C before round 1 with adaptive clipping.
        self.clip_norm: float = clip_norm
        self.adaptive = adaptive
        count_std = adaptive.count_std(expected_clients) if adaptive is not None else None
        #: z_Δ, the update sum's multiplier (z itself with a fixed norm).
        self.sum_noise_multiplier = (
            noise_multiplier
            if count_std is None
            else sum_noise_multiplier(noise_multiplier, count_std)
        )

    def __repr__(self) -> str:
        clip = f"adaptive={self.adaptive!r}" if self.adaptive else f"clip_norm={self.clip_norm}"
        return f"DPFedAvg({self.inner!r}, noise_multiplier={self.noise_multiplier}, {clip})"

    # --- server half ------------------------------------------------------------------

    def init(self, params: Params) -> ServerState:
        state = self.inner.init(params)
        if self.adaptive is None:
            return state
        dp = {"clip_norm": torch.tensor(self.clip_norm, dtype=torch.float64)}
        return replace(state, extras={**state.extras, "dp": dp})

    def current_clip_norm(self, state: ServerState) -> float:
        """C for the round after ``state``: from the state with adaptive clipping."""
        if self.adaptive is None:
            return float(self.clip_norm)
        return float(state.extras["dp"]["clip_norm"])

    def _for_round(self, state: ServerState) -> tuple[Strategy, ClipTally, float]:
        """A copy of the wrapped strategy whose aggregator is this round's noisy sum."""
        clip, tally = self.current_clip_norm(state), ClipTally()
        query = GaussianSum(
            clip_norm=clip,
            noise_std=self.sum_noise_multiplier * clip,
            expected_clients=self.expected_clients,
            seed=self.seed,
            round=state.rounds_completed + 1,
            tally=tally,
        )
        inner = copy.copy(self.inner)
        inner.aggregator = query
        return inner, tally, clip

    def combine(self, state: ServerState, updates: Iterable[ClientUpdate]) -> Params:
        """The round's noisy average delta (before the server optimizer)."""
        inner, _, _ = self._for_round(state)
        return inner.combine(state, updates)

    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        inner, tally, clip = self._for_round(state)
        return self._move_clip(state, inner.aggregate(state, updates), tally.unclipped, clip)

    def _move_clip(
        self, state: ServerState, new: ServerState, unclipped: int, clip: float
    ) -> ServerState:
        """``new`` with the next C (adaptive clipping) from this round's unclipped count."""
        if self.adaptive is None:
            return new
        generator = noise_generator(self.seed, state.rounds_completed + 1, COUNT_NOISE)
        fraction = self.adaptive.noisy_fraction(unclipped, self.expected_clients, generator)
        clip = self.adaptive.next_norm(clip, fraction)
        dp = {"clip_norm": torch.tensor(clip, dtype=torch.float64)}
        return replace(new, extras={**new.extras, "dp": dp})

    # --- sum path: the client clips, the server adds the noise to the unmasked sum -----

    def sum_bounds(
        self, state: ServerState, clip_range: float
    ) -> dict[str, tuple[int, float, float]]:
        """Clipped deltas lie in [−C, C] per coordinate (‖Δ‖ ≤ C); weights are uniform."""
        clip = self.current_clip_norm(state)
        length = sum(t.numel() for t in state.params.values())
        bounds = {"delta": (length, -clip, clip)}
        if self.adaptive is not None:
            bounds["unclipped"] = (1, 0.0, 1.0)
        return bounds

    def secure_parts(
        self,
        task: ClientTask,
        update: ClientUpdate,
        weight: float,
        clip_norm: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """clip(Δ, C) with weight 1 (and 1 if it fitted under C, for adaptive clipping)."""
        if clip_norm is None:
            raise FedgeError("differential privacy under secure aggregation needs the round's C")
        return clipped_parts(task, update, clip_norm, count_unclipped=self.adaptive is not None)

    def apply_sums(
        self, state: ServerState, sums: dict[str, torch.Tensor], count: int
    ) -> ServerState:
        """(Σ clip(Δ) + N(0, (z_Δ·C)² I)) / m through the wrapped strategy's optimizer."""
        clip = self.current_clip_norm(state)
        total = sums["delta"].to(torch.float64).clone()
        add_noise(total, self.sum_noise_multiplier * clip, self.seed, state.rounds_completed + 1)
        new = self.inner.apply_delta(
            state, unflatten_by_name(total / self.expected_clients, state.params)
        )
        unclipped = round(float(sums["unclipped"][0])) if self.adaptive is not None else 0
        return self._move_clip(state, new, unclipped, clip)


def check_dp_inner(inner: Strategy) -> None:
    """Refuse strategies whose aggregation the noisy sum would not cover."""
    if isinstance(inner, DPFedAvg):
        raise ConfigError("the strategy already has differential privacy")
    if isinstance(inner, FedNova):
        raise ConfigError(
            "differential privacy does not support FedNova yet: it rescales every delta by "
            "its local steps, which the clipping bound does not cover"
        )
    if isinstance(inner, Scaffold):
        raise ConfigError(
            "differential privacy does not support SCAFFOLD: its control variates are summed "
            "without noise and sent to every client, so they would reveal what the noise hides"
        )
    agg = inner.aggregator
    if isinstance(agg, NormBound):
        raise ConfigError(
            "privacy.clip_norm already bounds every delta: remove strategy.aggregator.clip_norm"
        )
    if not isinstance(agg, WeightedMean):
        raise ConfigError(
            f"differential privacy needs the mean aggregator, got {type(agg).__name__}: robust "
            "aggregators pick from individual updates, and the noise covers only a sum"
        )
