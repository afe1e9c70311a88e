"""Secure aggregation as a strategy's aggregation: what the client sends, what the server
sums, and the simulation wrapper that runs the real protocol for every round.

One round, on a deployment server or in simulation:

1. :func:`plan_round` (server): the graph parameters for the cohort, the vector layout
   from the strategy's :meth:`~fedge.fl.strategy.Strategy.sum_bounds`, the codec and the
   clipping norm, all sent to the clients with the task.
2. :func:`contribution` (client): the strategy's summands for its update, weighted,
   clipped to the layout's intervals (counted), stochastically quantized; with
   distributed DP, scaled, rounded and noised by the client
   (:mod:`~fedge.privacy.secagg.noisy`).
3. The SecAgg+ protocol sums the survivors' integers (:mod:`~fedge.privacy.secagg.protocol`).
4. :func:`apply_secure_sum` (server): decode the sum and hand it to the strategy's
   :meth:`~fedge.fl.strategy.Strategy.apply_sums`.

The server never sees an individual update: only the masked vectors, and their sum.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedge.config import SecureAggregationConfig
from fedge.errors import ConfigError
from fedge.fl.strategy import Strategy, Wrapper
from fedge.fl.types import ClientTask, ClientUpdate, ServerState
from fedge.privacy.dpfedavg import clipped_parts
from fedge.privacy.secagg.crypto import digest
from fedge.privacy.secagg.encoding import Encoded, Segment, VectorCodec
from fedge.privacy.secagg.noisy import SkellamCodec
from fedge.privacy.secagg.params import GraphParameters, find_parameters
from fedge.privacy.secagg.protocol import RoundSetup
from fedge.privacy.secagg.simulate import run_in_process

if TYPE_CHECKING:
    pass

__all__ = [
    "RoundPlan",
    "SecAggSettings",
    "SecureAggregation",
    "apply_secure_sum",
    "contribution",
    "plan_round",
    "secagg_settings",
]

log = logging.getLogger("fedge.secagg")


@dataclass(frozen=True)
class SecAggSettings:
    """An experiment's ``[privacy.secure_aggregation]``, resolved (see the config docs)."""

    dropout: float = 0.3
    corrupt: float = 0.05
    adversary: Literal["curious", "semi-malicious"] = "curious"
    modulus_bits: int = 32
    clip_range: float = 1.0
    weighting: Literal["samples", "uniform"] = "samples"
    max_weight: int | None = None
    degree: int | None = None
    threshold: int | None = None
    simulated_dropout: float = 0.0
    stage_seconds: float = 60.0

    def graph(self, clients: int) -> GraphParameters:
        """k and t for a cohort of ``clients`` (found, or as configured)."""
        found = find_parameters(
            clients, dropout=self.dropout, corrupt=self.corrupt, adversary=self.adversary
        )
        degree = self.degree if self.degree is not None else found.degree
        threshold = self.threshold if self.threshold is not None else found.threshold
        degree = min(degree, clients - 1)
        if not 2 <= threshold <= degree:
            raise ConfigError(
                f"secure aggregation: threshold {threshold} must be in [2, degree {degree}]"
            )
        return GraphParameters(clients, degree, threshold)


def secagg_settings(
    config: SecureAggregationConfig, *, largest_client: int | None = None
) -> SecAggSettings:
    """``[privacy.secure_aggregation]`` as settings; ``max_weight`` defaults to
    ``largest_client`` (a simulation knows every client's size)."""
    values = config.model_dump()
    if values["max_weight"] is None:
        values["max_weight"] = largest_client
    return SecAggSettings(**values)


@dataclass(frozen=True)
class RoundPlan:
    """Everything a secure round's clients and server agree on before it starts."""

    setup: RoundSetup
    graph: GraphParameters
    codec: VectorCodec | SkellamCodec
    weighting: Literal["samples", "uniform"]
    max_weight: int | None
    clip_norm: float | None

    def to_json(self) -> dict:
        data = {
            "context": self.setup.context.hex(),
            "threshold": self.graph.threshold,
            "degree": self.graph.degree,
            "modulus_bits": self.setup.modulus_bits,
            "max_clients": self.codec.max_clients,
            "segments": [[s.name, s.length, s.lo, s.hi] for s in self.codec.segments],
            "weighting": self.weighting,
            "max_weight": self.max_weight,
            "clip_norm": self.clip_norm,
        }
        if isinstance(self.codec, SkellamCodec):
            data["distributed_dp"] = self.codec.to_json()
        return data

    @staticmethod
    def from_json(data: dict) -> RoundPlan:
        segments = tuple(
            Segment(str(n), int(ln), float(lo), float(hi)) for n, ln, lo, hi in data["segments"]
        )
        bits, max_clients = int(data["modulus_bits"]), int(data["max_clients"])
        codec: VectorCodec | SkellamCodec
        if data.get("distributed_dp") is not None:
            codec = SkellamCodec.from_json(data["distributed_dp"], segments, bits, max_clients)
        else:
            codec = VectorCodec(segments, bits, max_clients)
        setup = RoundSetup(
            bytes.fromhex(data["context"]),
            int(data["threshold"]),
            codec.bits,
            codec.length,
            min_survivors=_min_survivors(codec),
        )
        graph = GraphParameters(
            int(data["max_clients"]), int(data["degree"]), int(data["threshold"])
        )
        clip = data.get("clip_norm")
        return RoundPlan(
            setup,
            graph,
            codec,
            data["weighting"],
            data.get("max_weight"),
            None if clip is None else float(clip),
        )


def plan_round(
    strategy: Strategy,
    state: ServerState,
    settings: SecAggSettings,
    *,
    cohort: int,
    context: bytes,
) -> RoundPlan:
    """The plan of the round after ``state`` for a cohort of ``cohort`` clients."""
    strategy.check_sum_path()
    graph = settings.graph(cohort)
    bounds = strategy.sum_bounds(state, settings.clip_range)
    segments = tuple(Segment(name, length, lo, hi) for name, (length, lo, hi) in bounds.items())
    # distributed DP: the strategy's own codec, whose clients add the noise
    codec_fn = getattr(strategy, "secure_codec", None)
    codec: VectorCodec | SkellamCodec = (
        codec_fn(segments, settings.modulus_bits, cohort)
        if codec_fn is not None
        else VectorCodec(segments, settings.modulus_bits, cohort)
    )
    clip_fn = getattr(strategy, "current_clip_norm", None)
    clip = float(clip_fn(state)) if clip_fn is not None else None
    if settings.weighting == "samples" and settings.max_weight is None and clip is None:
        raise ConfigError(
            "secure aggregation with sample weighting needs max_weight: the largest sample "
            "count a client's weight reflects (weights are min(n_k, max_weight)/max_weight)"
        )
    return RoundPlan(
        setup=RoundSetup(
            context,
            graph.threshold,
            settings.modulus_bits,
            codec.length,
            min_survivors=_min_survivors(codec),
        ),
        graph=graph,
        codec=codec,
        weighting=settings.weighting,
        max_weight=settings.max_weight,
        clip_norm=clip,
    )


def client_weight(plan: RoundPlan, num_samples: int) -> tuple[float, bool]:
    """ω_k in (0, 1] and whether the sample count exceeded ``max_weight``."""
    if plan.weighting == "uniform" or plan.max_weight is None:
        return 1.0, False
    return min(num_samples, plan.max_weight) / plan.max_weight, num_samples > plan.max_weight


def contribution(
    strategy: Strategy,
    plan: RoundPlan,
    task: ClientTask,
    update: ClientUpdate,
    generator: np.random.Generator,
) -> Encoded:
    """The client side: the quantized summands of ``update`` (clipped values counted).

    In a round with differential privacy (the plan carries the clipping norm C) the
    client clips its delta to C and weighs it 1, whatever its own strategy object is: a
    device builds its strategy from the task's ``[strategy]``, which knows nothing of DP.
    With distributed DP (a :class:`SkellamCodec`) the codec also adds the client's noise,
    drawn from ``generator``: on a device, a generator nobody else can seed."""
    weight, capped = client_weight(plan, update.num_samples)
    if plan.clip_norm is not None:  # a DP round: the plan, not the client's strategy, says so
        names = {segment.name for segment in plan.codec.segments}
        parts = clipped_parts(task, update, plan.clip_norm, count_unclipped="unclipped" in names)
    else:
        parts = strategy.secure_parts(task, update, weight)
    encoded = plan.codec.encode(parts, generator)
    return Encoded(encoded.values, encoded.clipped + int(capped))


def apply_secure_sum(
    strategy: Strategy, state: ServerState, plan: RoundPlan, total: np.ndarray, count: int
) -> ServerState:
    """The server side: decode the unmasked sum of ``count`` clients and apply it."""
    sums = plan.codec.decode(total, count)
    return strategy.apply_sums(state, sums, count)


def round_context(seed: int, round: int) -> bytes:
    """The context of a simulated round (a deployment adds its federation id)."""
    return digest("fedge simulation", str(seed), str(round))


class SecureAggregation(Wrapper):
    """A strategy whose every round is aggregated through SecAgg+ (the real protocol, in
    process): the wrapped strategy only ever receives the unmasked sum.

    A fraction ``settings.simulated_dropout`` of each cohort vanishes after sharing keys
    (drawn from the seed and the round), as clients do on a real fleet; their updates are
    lost and the protocol recovers the survivors' sum.
    """

    def __init__(self, inner: Strategy, settings: SecAggSettings, *, seed: int):
        inner.check_sum_path()
        super().__init__(inner)
        self.settings = settings
        self.seed = seed
        #: A report of the last aggregated round (for metrics; not state): k, t, clients
        #: summed, dropped, clipped values.
        self.last_round: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"SecureAggregation({self.inner!r}, {self.settings!r})"

    def aggregate(self, state: ServerState, updates: Iterable[ClientUpdate]) -> ServerState:
        received = list(updates)
        round = state.rounds_completed + 1
        plan = plan_round(
            self.inner,
            state,
            self.settings,
            cohort=len(received),
            context=round_context(self.seed, round),
        )
        task = self.inner.client_task(state)
        inputs, clipped = {}, 0
        for update in received:
            who = str(update.client)
            generator = np.random.default_rng([self.seed, round, 0x5EC, _key(update.client)])
            encoded = contribution(self.inner, plan, task, update, generator)
            inputs[who] = encoded.values
            clipped += encoded.clipped
        if clipped:
            log.warning(
                "round %d: %d values fell outside the secure-aggregation range and were "
                "clipped (raise privacy.secure_aggregation.clip_range or max_weight)",
                round,
                clipped,
            )
        drop = _simulated_dropouts(list(inputs), self.settings.simulated_dropout, self.seed, round)
        total, view, _ = run_in_process(
            plan.setup,
            inputs,
            degree=plan.graph.degree,
            graph_seed=round,
            drop_before={"masked": drop},
        )
        new = apply_secure_sum(self.inner, state, plan, total, len(view.survivors))
        self.last_round = {
            "degree": plan.graph.degree,
            "threshold": plan.graph.threshold,
            "summed": len(view.survivors),
            "dropped": len(view.dropped),
            "clipped_values": clipped,
        }
        if isinstance(plan.codec, SkellamCodec):  # the clients' noise in the unmasked sum
            self.last_round.update(plan.codec.noise_report(len(view.survivors)))
        return new


def _min_survivors(codec: VectorCodec | SkellamCodec) -> int:
    """The fewest survivors a round may unmask: those the noise is planned for."""
    return codec.min_survivors if isinstance(codec, SkellamCodec) else 0


def _key(client: int | str) -> int:
    if isinstance(client, int):
        return client
    return int.from_bytes(digest(client)[:8], "little")


def _simulated_dropouts(members: list[str], fraction: float, seed: int, round: int) -> set[str]:
    count = int(fraction * len(members))
    if count == 0:
        return set()
    rng = np.random.default_rng([seed, round, 0xD20])
    return {members[i] for i in rng.choice(len(members), size=count, replace=False)}
