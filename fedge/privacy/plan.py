"""From an experiment's ``[privacy]`` section to a resolved plan: noise multiplier, δ,
clipping, and how many rounds the budget allows.

:func:`plan_privacy` resolves everything before training: δ (default
:func:`~fedge.privacy.ledger.default_delta`), z (given, or calibrated so that all planned
rounds fit ``target_epsilon``), and, when both z and a target are given, the last round
whose ε fits (the budget stop). :meth:`PrivacyPlan.wrap` puts DP-FedAvg on a strategy;
:func:`plan_report` is what ``fedge privacy plan`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedge.config import PrivacyConfig
from fedge.errors import ConfigError
from fedge.fl.strategy import Strategy
from fedge.privacy.clipping import AdaptiveClipping, sum_noise_multiplier
from fedge.privacy.dpfedavg import DPFedAvg
from fedge.privacy.ledger import PrivacyLedger, calibrate_noise_multiplier, default_delta
from fedge.privacy.local import LocalDP
from fedge.privacy.secagg.params import find_parameters

__all__ = ["PrivacyPlan", "plan_privacy", "plan_report", "secagg_report"]


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
        """``strategy`` with DP-FedAvg on its aggregation, or local DP on its clients
        (refuses what DP cannot cover)."""
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
        return {
            "mechanism": "local DP, client noise" if led.local else "DP-FedAvg, central noise",
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
) -> PrivacyPlan:
    """Resolve ``config`` for a federation of ``num_clients`` with cohorts of
    ``clients_per_round`` training ``rounds`` rounds; raises :class:`ConfigError` when the
    budget does not allow even one round, or adaptive clipping cannot share it."""
    delta = config.delta if config.delta is not None else default_delta(num_clients)
    z, target = config.noise_multiplier, config.target_epsilon
    local = config.dp == "local"
    calibrated = z is None
    if z is None:
        if target is None:
            raise ConfigError("give privacy.noise_multiplier, privacy.target_epsilon or both")
        z = calibrate_noise_multiplier(
            num_clients, clients_per_round, rounds, target, delta, local=local, amplified=amplified
        )
    ledger = PrivacyLedger(
        num_clients, clients_per_round, z, delta, local=local, amplified=amplified
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
