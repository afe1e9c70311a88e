"""Distributed differential privacy: the clients add the noise under secure aggregation, so
the server only ever unmasks an already-noised sum.

Agarwal, Kairouz, Liu. "The Skellam Mechanism for Differentially Private Federated
Learning". NeurIPS 2021 (on DP-FedAvg, McMahan et al. ICLR 2018).

``privacy.dp = "distributed"`` with ``[privacy.secure_aggregation]``. Each client of a
round clips its delta to L2 norm S, scales and rounds it to integers of norm at most B,
adds Skellam noise of variance μᵢ per coordinate and masks the result
(:class:`~fedge.privacy.secagg.noisy.SkellamCodec`); the server unmasks the sum of the
survivors, divides it by the expected cohort size m like central DP-FedAvg, and adds no
noise of its own. Sums of Skellams are Skellam, so the sum holds noise of variance
(survivors)·μᵢ. μᵢ = μ/(min_survivors − colluding) is planned for the fewest honest
clients a round may unmask (:class:`~fedge.privacy.skellam.SkellamParameters`): a round
with fewer survivors aborts before unmasking, so every sum the server sees holds at least
μ = (z·B)² of noise that the server and its colluders do not know.

Compared with the central placement (:mod:`fedge.privacy.dpfedavg`) the server is no
longer trusted with the un-noised sum. The price: the noise is planned for the fewest
survivors, so a round where more survive carries more noise than needed, and integers
cost a little sensitivity (B ≥ γS) and a term of the RDP bound. The ledger accounts it
as a Skellam mechanism per round, with no amplification by sampling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import torch

from fedge.errors import ConfigError, FedgeError
from fedge.fl.strategy import Strategy, Wrapper
from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState, unflatten_by_name
from fedge.privacy.dpfedavg import DPFedAvg, check_dp_inner, clipped_parts
from fedge.privacy.secagg.encoding import Segment
from fedge.privacy.secagg.noisy import SkellamCodec
from fedge.privacy.skellam import SkellamParameters

__all__ = ["DistributedDP"]


class DistributedDP(Wrapper):
    """A strategy whose clients clip and noise their deltas for a secure sum.

    Parameters
    ----------
    inner:
        The strategy to privatize (FedAvg, FedAvgM, FedOpt or FedProx) with the mean
        aggregator; its server optimizer applies the noisy average.
    parameters:
        The scale, norm bound and noise (:class:`SkellamParameters`).
    expected_clients:
        m, the cohort size the noisy sum is divided by.
    """

    def __init__(self, inner: Strategy, *, parameters: SkellamParameters, expected_clients: int):
        if isinstance(inner, DistributedDP | DPFedAvg):
            raise ConfigError("the strategy already has differential privacy")
        check_dp_inner(inner)
        if expected_clients < 1:
            raise ConfigError(f"expected clients must be >= 1, got {expected_clients}")
        super().__init__(inner)
        self.parameters = parameters
        self.expected_clients = expected_clients

    def __repr__(self) -> str:
        p = self.parameters
        return (
            f"DistributedDP({self.inner!r}, noise_multiplier={p.noise_multiplier}, "
            f"clip_norm={p.clip_norm})"
        )

    @property
    def noise_multiplier(self) -> float:
        return self.parameters.noise_multiplier

    def current_clip_norm(self, state: ServerState) -> float:
        """S, which the round's plan sends to the clients."""
        return float(self.parameters.clip_norm)

    # --- no plain path: the noise comes from the clients ----------------------------------

    def _refuse(self) -> NoReturn:
        raise ConfigError(
            'privacy.dp = "distributed" needs [privacy.secure_aggregation]: the clients add '
            "the noise to the vectors they mask, and a plain update would carry none"
        )

    def combine(self, state: ServerState, updates: Iterable[ClientUpdate]) -> Params:
        self._refuse()

    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        self._refuse()

    # --- the sum path ---------------------------------------------------------------------

    def sum_bounds(
        self, state: ServerState, clip_range: float
    ) -> dict[str, tuple[int, float, float]]:
        """One summand, the delta clipped to S (``clip_range`` does not apply)."""
        clip = self.parameters.clip_norm
        length = sum(t.numel() for t in state.params.values())
        return {"delta": (length, -clip, clip)}

    def secure_codec(self, segments: tuple[Segment, ...], bits: int, clients: int) -> SkellamCodec:
        """The round's codec: the clients scale, round and noise their deltas."""
        p = self.parameters
        if bits != p.modulus_bits:
            raise FedgeError(f"distributed DP was planned for a {p.modulus_bits}-bit modulus")
        if clients > p.max_clients:
            raise FedgeError(
                f"a secure round of {clients} clients, distributed DP was planned for at "
                f"most {p.max_clients}"
            )
        if len(segments) != 1:
            raise FedgeError("distributed DP sums the delta alone")
        return SkellamCodec.from_parameters(segments[0], p)

    def secure_parts(
        self,
        task: ClientTask,
        update: ClientUpdate,
        weight: float,
        clip_norm: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """clip(Δ, S) with weight 1."""
        clip = self.parameters.clip_norm if clip_norm is None else clip_norm
        return clipped_parts(task, update, clip, count_unclipped=False)

    def apply_sums(
        self, state: ServerState, sums: dict[str, torch.Tensor], count: int
    ) -> ServerState:
        """(Σ clip(Δ) + the clients' noise) / m through the wrapped strategy's optimizer:
        the server adds nothing."""
        total = sums["delta"].to(torch.float64)
        return self.inner.apply_delta(
            state, unflatten_by_name(total / self.expected_clients, state.params)
        )
