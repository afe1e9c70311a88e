"""From an experiment's ``[privacy]`` section to a resolved plan: noise multiplier, δ,
clipping, and how many rounds the budget allows.

:func:`plan_privacy` resolves everything before training: δ (default
:func:`~fedge.privacy.ledger.default_delta`), z (given, or calibrated so that all planned
rounds fit ``target_epsilon``), and, when both z and a target are given, the last round
whose ε fits (the budget stop). :meth:`PrivacyPlan.wrap` puts DP-FedAvg on a strategy;
:func:`plan_report` is what ``fedge privacy plan`` prints. With ``dp = "distributed"`` the
plan also resolves the Skellam mechanism the clients run (:mod:`fedge.privacy.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedge.config import PrivacyConfig
from fedge.errors import ConfigError
from fedge.fl.strategy import Strategy
from fedge.privacy.clipping import AdaptiveClipping, sum_noise_multiplier
from fedge.privacy.distributed import DistributedDP
from fedge.privacy.dpfedavg import DPFedAvg
from fedge.privacy.ledger import PrivacyLedger, calibrate_noise_multiplier, default_delta
from fedge.privacy.local import LocalDP
from fedge.privacy.secagg.params import find_parameters
from fedge.privacy.skellam import WRAP_PROBABILITY, SkellamParameters, calibrate_skellam

__all__ = ["PrivacyPlan", "distributed_report", "plan_privacy", "plan_report", "secagg_report"]


@dataclass(frozen=True)
class PrivacyPlan:
    """A resolved ``[privacy]`` section for one federation.

    Attributes
    ----------
    ledger:
        ε per round for these N, m, z and δ.
    clip_norm:
        The fixed clipping norm S, or the initial C with adaptive clipping.
    adaptive:
        The adaptive clipping rule, or ``None`` for a fixed norm.
    rounds:
        Rounds to train: the planned ones, or fewer when the budget stops training.
    planned_rounds:
        The experiment's ``rounds``.
    target_epsilon:
        The budget, if one was given.
    calibrated:
        Whether z was calibrated from the budget rather than given.
    """

    ledger: PrivacyLedger
    clip_norm: float
    adaptive: AdaptiveClipping | None
    rounds: int
    planned_rounds: int
    target_epsilon: float | None = None
    calibrated: bool = False

    @property
    def noise_multiplier(self) -> float:
        return self.ledger.noise_multiplier

    def epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` rounds at the plan's δ."""
        return self.ledger.epsilon(rounds)

    def wrap(self, strategy: Strategy, *, seed: int) -> Strategy:
        """``strategy`` with DP-FedAvg on its aggregation, or local or distributed DP on
        its clients (refuses what DP cannot cover)."""
        if self.ledger.skellam is not None:
            return DistributedDP(
                strategy,
                parameters=self.ledger.skellam,
                expected_clients=self.ledger.clients_per_round,
            )
        if self.ledger.local:
            return LocalDP(
                strategy,
                noise_multiplier=self.noise_multiplier,
                clip_norm=self.clip_norm,
                seed=seed,
            )
        return DPFedAvg(
            strategy,
            noise_multiplier=self.noise_multiplier,
            expected_clients=self.ledger.clients_per_round,
            seed=seed,
            clip_norm=None if self.adaptive else self.clip_norm,
            adaptive=self.adaptive,
        )

    @property
    def budget_stop(self) -> str | None:
        """Why training stops before the planned rounds, or ``None`` if it does not."""
        if self.rounds >= self.planned_rounds:
            return None
        return (
            f"the budget ε = {self.target_epsilon:g} allows {self.rounds} of the "
            f"{self.planned_rounds} planned rounds (round {self.rounds + 1} would reach "
            f"ε = {self.epsilon(self.rounds + 1):.3g}); training stops after round {self.rounds}"
        )

    def guarantee(self, rounds: int) -> str:
        """What the ledger's ε after ``rounds`` rounds covers, in one sentence."""
        led = self.ledger
        if led.skellam is not None:
            n = led.skellam.colluding
            colluding = f"with up to {n} colluding clients" if n else "alone"
            return (
                f"user-level ({self.epsilon(rounds):.3g}, {led.delta:.3g})-DP over the "
                f"{led.num_clients} clients (any one client's data replaced), for every sum "
                f"the server unmasks and every model it releases after {rounds} rounds: the "
                "clients add the noise before secure aggregation (distributed DP), against "
                f"a server that follows the protocol {colluding}, no amplification by "
                "sampling"
            )
        if not led.local and not led.amplified:
            return (
                f"user-level ({self.epsilon(rounds):.3g}, {led.delta:.3g})-DP over the "
                f"{led.num_clients} devices (any one device's data replaced), for the released "
                f"model after {rounds} rounds, whichever devices took part (no amplification "
                "by sampling)"
            )
        if led.local:
            return (
                f"user-level local ({self.epsilon(rounds):.3g}, {led.delta:.3g})-DP for each "
                f"client's updates against everyone, the server included (any one client's "
                f"data replaced), for a client in all {rounds} rounds"
            )
        return (
            f"user-level ({self.epsilon(rounds):.3g}, {led.delta:.3g})-DP over the "
            f"{led.num_clients} clients (any one client's data replaced), for the released "
            f"model after {rounds} rounds"
        )

    def summary(self, rounds: int) -> dict[str, Any]:
        """The ``privacy`` entry of ``summary.json`` after ``rounds`` trained rounds."""
        led = self.ledger
        if led.skellam is not None:
            return {**self._summary(rounds), **_distributed_summary(led.skellam)}
        return self._summary(rounds)

    def _summary(self, rounds: int) -> dict[str, Any]:
        led = self.ledger
        return {
            "mechanism": "local DP, client noise" if led.local else "DP-FedAvg, central noise",
            "placement": "local" if led.local else "central",
            "epsilon": self.epsilon(rounds),
            "delta": led.delta,
            "guarantee": self.guarantee(rounds),
            "noise_multiplier": led.noise_multiplier,
            "noise_multiplier_calibrated": self.calibrated,
            "clip_norm": None if self.adaptive else self.clip_norm,
            "adaptive_clipping": self.adaptive is not None,
            "target_epsilon": self.target_epsilon,
            "budget_stop": self.budget_stop,
            "accounting": (
                "RDP (dp-accounting), one Gaussian mechanism per round a client takes part "
                "in, no amplification by sampling, replace-one neighbours"
                if led.local or not led.amplified
                else f"RDP (dp-accounting), {led.clients_per_round} of {led.num_clients} "
                "clients sampled without replacement per round, replace-one neighbours"
            ),
        }


def plan_privacy(
    config: PrivacyConfig,
    *,
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    amplified: bool = True,
    dimension: int | None = None,
    max_clients: int | None = None,
) -> PrivacyPlan:
    """Resolve ``config`` for a federation of ``num_clients`` with cohorts of
    ``clients_per_round`` training ``rounds`` rounds; raises :class:`ConfigError` when the
    budget does not allow even one round, or adaptive clipping cannot share it.

    Distributed DP also needs the model's ``dimension`` (values per update) and
    ``max_clients``, the most clients a secure round may sum (default
    ``clients_per_round``; a deployment's over-selected cohort)."""
    delta = config.delta if config.delta is not None else default_delta(num_clients)
    z, target = config.noise_multiplier, config.target_epsilon
    local = config.dp == "local"
    skellam = None
    if config.dp == "distributed":
        skellam = _skellam_for(config, dimension, clients_per_round, max_clients)
    calibrated = z is None
    if z is None:
        if target is None:
            raise ConfigError("give privacy.noise_multiplier, privacy.target_epsilon or both")
        if skellam is not None:
            z = calibrate_skellam(skellam, rounds, target, delta)
        else:
            z = calibrate_noise_multiplier(
                num_clients,
                clients_per_round,
                rounds,
                target,
                delta,
                local=local,
                amplified=amplified,
            )
    ledger = PrivacyLedger(
        num_clients,
        clients_per_round,
        z,
        delta,
        local=local,
        amplified=amplified,
        skellam=skellam(z) if skellam is not None else None,
    )
    allowed = rounds if target is None else ledger.rounds_within(target, rounds)
    if allowed == 0:
        raise ConfigError(
            f"privacy.target_epsilon {target:g} does not allow a single round with noise "
            f"multiplier {z:g} (one round costs ε = {ledger.epsilon(1):.3g})"
        )
    adaptive = None
    if config.adaptive_clipping:
        adaptive = AdaptiveClipping(
            initial_norm=config.clip_norm if config.clip_norm is not None else 0.1,
            target_quantile=config.target_quantile or 0.5,
            learning_rate=config.clip_lr or 0.2,
            count_noise=config.count_noise,
        )
        sum_noise_multiplier(z, adaptive.count_std(clients_per_round))  # z < 2σ_b, or refuse
        clip = adaptive.initial_norm
    elif config.clip_norm is None:
        raise ConfigError("fixed clipping needs privacy.clip_norm")
    else:
        clip = config.clip_norm
    return PrivacyPlan(
        ledger=ledger,
        clip_norm=clip,
        adaptive=adaptive,
        rounds=allowed,
        planned_rounds=rounds,
        target_epsilon=target,
        calibrated=calibrated,
    )


def plan_report(
    num_clients: int, clients_per_round: int, rounds: int, epsilon: float, delta: float
) -> list[str]:
    """What ``fedge privacy plan`` prints: the noise multiplier that reaches (ε, δ) after
    ``rounds`` rounds, and the noise std of the averaged update relative to the clipping
    norm, z/m."""
    z = calibrate_noise_multiplier(num_clients, clients_per_round, rounds, epsilon, delta)
    reached = PrivacyLedger(num_clients, clients_per_round, z, delta).epsilon(rounds)
    return [
        f"noise multiplier z = {z:.4g}: ε = {reached:.4g} at δ = {delta:g} after {rounds} "
        f"rounds of {clients_per_round} clients drawn from {num_clients} without replacement",
        f"noise std of the averaged update: z/m = {z / clients_per_round:.4g} × the clipping "
        "norm S (per coordinate)",
    ]


def secagg_report(clients_per_round: int, dropout: float, corrupt: float) -> str:
    """The SecAgg+ line of ``fedge privacy plan``: k and t for a cohort of
    ``clients_per_round`` that tolerates ``dropout`` and ``corrupt`` fractions."""
    graph = find_parameters(clients_per_round, dropout=dropout, corrupt=corrupt)
    shape = "complete graph" if graph.complete else "Harary graph"
    return (
        f"secure aggregation (SecAgg+): each of the {clients_per_round} clients masks with "
        f"k = {graph.degree} neighbours ({shape}), threshold t = {graph.threshold}: "
        f"tolerates {dropout:.0%} dropouts with {corrupt:.0%} of clients colluding with a "
        "curious server (2^-40 security, 2^-20 failure)"
    )


def _skellam_for(
    config: PrivacyConfig, dimension: int | None, clients_per_round: int, max_clients: int | None
) -> Callable[[float], SkellamParameters]:
    """The Skellam parameters of ``config`` as a function of the noise multiplier."""
    secagg = config.secure_aggregation
    if secagg is None:
        raise ConfigError('privacy.dp = "distributed" needs [privacy.secure_aggregation]')
    if dimension is None:
        raise ConfigError("distributed DP needs the number of values in the model")
    if config.clip_norm is None or config.adaptive_clipping:
        raise ConfigError('privacy.dp = "distributed" needs a fixed privacy.clip_norm')
    clip = config.clip_norm

    def parameters(z: float) -> SkellamParameters:
        return SkellamParameters.for_cohort(
            clip_norm=clip,
            noise_multiplier=z,
            dimension=dimension,
            clients_per_round=clients_per_round,
            max_clients=max_clients or clients_per_round,
            dropout=secagg.dropout,
            corrupt=secagg.corrupt,
            modulus_bits=secagg.modulus_bits,
        )

    return parameters


def _distributed_summary(p: SkellamParameters) -> dict[str, Any]:
    """What ``summary.json`` adds for distributed DP."""
    return {
        "mechanism": "distributed DP: Skellam noise added by the clients under secure aggregation",
        "placement": "distributed",
        "accounting": "RDP of the Skellam mechanism (Agarwal et al. 2021) on the integer "
        "sensitivities, composed over rounds and converted by dp-accounting; one mechanism "
        "per round, no amplification by sampling, replace-one neighbours",
        "skellam": {
            "scale": p.scale,
            "norm_bound": p.norm_bound,
            "variance": p.variance,
            "client_variance": p.client_variance,
            "min_survivors": p.min_survivors,
            "colluding": p.colluding,
            "noise_std": p.noise_std,
            "modulus_bits": p.modulus_bits,
            "wrap_probability": WRAP_PROBABILITY,
        },
    }


def distributed_report(
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    epsilon: float,
    delta: float,
    *,
    dimension: int,
    dropout: float,
    corrupt: float,
    modulus_bits: int = 32,
    clip_norm: float = 1.0,
) -> list[str]:
    """What ``fedge privacy plan --params D`` adds: the Skellam noise that reaches (ε, δ)
    after ``rounds`` rounds of distributed DP (no amplification by sampling), as the
    clients add it."""

    def parameters(z: float) -> SkellamParameters:
        return SkellamParameters.for_cohort(
            clip_norm=clip_norm,
            noise_multiplier=z,
            dimension=dimension,
            clients_per_round=clients_per_round,
            max_clients=clients_per_round,
            dropout=dropout,
            corrupt=corrupt,
            modulus_bits=modulus_bits,
        )

    _ = num_clients  # ε does not depend on N: nothing is amplified by sampling
    z = calibrate_skellam(parameters, rounds, epsilon, delta)
    p = parameters(z)
    gaussian = PrivacyLedger(num_clients, clients_per_round, z, delta, amplified=False)
    equivalent = p.noise_std / clip_norm
    return [
        f"distributed DP (Skellam, the clients add the noise under SecAgg+): noise "
        f"multiplier z = {z:.4g}: ε = {p.epsilon(rounds, delta):.4g} at δ = {delta:g} after "
        f"{rounds} rounds, no amplification by sampling (Gaussian noise with the same z: "
        f"ε = {gaussian.epsilon(rounds):.4g})",
        f"scale γ = {p.scale:.4g} integers per unit of the {dimension} values (γS = "
        f"{p.scale * clip_norm:.4g} for S = {clip_norm:g}), rounded norm bound B = "
        f"{p.norm_bound:.4g}, {modulus_bits}-bit modulus (wraps with probability at most "
        f"{WRAP_PROBABILITY:.2g} per round)",
        f"noise on the sum: μ = (z·B)² = {p.variance:.4g} (integer units²); each client adds "
        f"Skellam noise of variance μ/{p.noise_clients} = {p.client_variance:.4g}, planned "
        f"for {p.min_survivors} survivors of which {p.colluding} may collude",
        f"equivalent Gaussian noise multiplier √μ/(γS) = {equivalent:.4g}; noise std of the "
        f"averaged update: {equivalent / clients_per_round:.4g} × the clipping norm S (per "
        "coordinate, with the fewest survivors)",
    ]
