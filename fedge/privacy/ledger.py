"""The privacy ledger: (ε, δ) of DP-FedAvg after each round, from Google's ``dp-accounting``.

Every round is one subsampled Gaussian mechanism; rounds compose under Rényi DP
(Mironov, "Rényi Differential Privacy", CSF 2017), and the composed RDP curve is turned
into ε at the configured δ by dp-accounting's conversion (Canonne, Kamath, Steinke 2020,
Proposition 12).

The event must match how clients are sampled. fedge draws a cohort of exactly m distinct
clients out of N, uniformly, every round (:func:`fedge.fl.sampling.sample_clients`), so a
round is ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z/2))`` composed by the
RDP accountant under the *replace-one* relation (Wang, Balle, Kasiviswanathan,
"Subsampled Rényi Differential Privacy and Analytical Moments Accountant", AISTATS 2019,
Theorem 27): with N fixed, neighbouring federations differ by one client's data being
replaced, not removed. Replacing a client moves the clipped sum by up to 2C (‖Δ − Δ'‖ ≤
2C), twice the add/remove sensitivity, so the noise std z·C is z/2 times that
sensitivity: passing z itself would overstate the privacy.

``δ`` is the probability mass the guarantee may fail on; it should be well below 1/N.
:func:`default_delta` is min(1e-5, N^-1.1).

Distributed DP (``skellam``) has no dp-accounting event: a round is one Skellam mechanism
(:mod:`fedge.privacy.skellam`), whose RDP curve the ledger composes itself (RDP adds up
over rounds) and converts with dp-accounting's conversion, as for the Gaussian rounds.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from fedge.errors import ConfigError

if TYPE_CHECKING:
    import dp_accounting

    from fedge.privacy.skellam import SkellamParameters

__all__ = ["PrivacyLedger", "calibrate_noise_multiplier", "default_delta", "round_event"]


def _dpa() -> ModuleType:
    """dp-accounting, imported when first needed: it pulls in SciPy (about a second), which
    a simulation without ``[privacy]`` should not pay for."""
    import dp_accounting

    return dp_accounting


def _accountant() -> dp_accounting.PrivacyAccountant:
    """A fresh RDP accountant for the replace-one relation of fixed-size cohorts."""
    dpa = _dpa()
    return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)


def default_delta(num_clients: int) -> float:
    """min(1e-5, N^-1.1): 1e-5 for federations up to ~35,000 clients, below 1/N beyond."""
    return min(1e-5, num_clients**-1.1)


def round_event(
    num_clients: int,
    clients_per_round: int,
    noise_multiplier: float,
    *,
    local: bool = False,
    amplified: bool = True,
) -> dp_accounting.DpEvent:
    """One round of DP-FedAvg: m of N clients sampled without replacement, Gaussian noise
    of z times the add/remove sensitivity (z/2 times the replace-one sensitivity).

    ``local``: each client noises its own update, and the server, which sees every noisy
    update and knows who sent it, is the adversary: no amplification by sampling, one
    Gaussian mechanism per round for a client that takes part in it. ``amplified=False``:
    central noise, but cohorts that are not drawn uniformly at random (on a fleet, who
    takes part depends on who checks in): no amplification either."""
    dpa = _dpa()
    gaussian = dpa.GaussianDpEvent(noise_multiplier / 2)
    if local or not amplified:
        return gaussian
    return dpa.SampledWithoutReplacementDpEvent(num_clients, clients_per_round, gaussian)


def _check(num_clients: int, clients_per_round: int, delta: float) -> None:
    if num_clients < 1 or not 1 <= clients_per_round <= num_clients:
        raise ConfigError(
            f"need 1 <= clients per round <= clients, got {clients_per_round} of {num_clients}"
        )
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


@dataclass(frozen=True)
class PrivacyLedger:
    """ε after any number of rounds of DP-FedAvg with these settings.

    Parameters
    ----------
    num_clients:
        N, the population the cohorts are drawn from.
    clients_per_round:
        m, the cohort size.
    noise_multiplier:
        z, noise std relative to the clipping norm.
    delta:
        δ of the (ε, δ) guarantee.
    local:
        Local DP: ε of a client that took part in every round, against the server
        (:func:`round_event`).
    amplified:
        Whether the cohorts are uniform random samples, which amplify privacy; a
        deployment's are not (:func:`round_event`).
    skellam:
        Distributed DP: each round is this Skellam mechanism, without amplification
        (``local`` and ``amplified`` do not apply).
    """

    num_clients: int
    clients_per_round: int
    noise_multiplier: float
    delta: float
    local: bool = False
    amplified: bool = True
    skellam: SkellamParameters | None = None
    _orders: np.ndarray = field(init=False, repr=False, compare=False)
    _round_rdp: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.num_clients, self.clients_per_round, self.delta)
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"noise multiplier must be positive, got {self.noise_multiplier}")
        # One round's RDP curve, computed once: rounds compose by adding it up.
        if self.skellam is not None:
            from fedge.privacy.skellam import RDP_ORDERS

            object.__setattr__(self, "_orders", np.asarray(RDP_ORDERS, dtype=np.float64))
            object.__setattr__(self, "_round_rdp", self.skellam.rdp(RDP_ORDERS))
            return
        accountant = _accountant()
        accountant.compose(self.event())
        object.__setattr__(self, "_orders", np.asarray(accountant.orders))
        object.__setattr__(self, "_round_rdp", np.asarray(accountant.rdp))

    def event(self, rounds: int = 1) -> dp_accounting.DpEvent:
        """The dp-accounting event of ``rounds`` rounds (none for distributed DP)."""
        if self.skellam is not None:
            raise ConfigError("dp-accounting has no event for the Skellam mechanism")
        one = round_event(
            self.num_clients,
            self.clients_per_round,
            self.noise_multiplier,
            local=self.local,
            amplified=self.amplified,
        )
        return one if rounds == 1 else _dpa().SelfComposedDpEvent(one, rounds)

    def epsilon(self, rounds: int) -> float:
        """ε at :attr:`delta` after ``rounds`` rounds (0 for none)."""
        if rounds <= 0:
            return 0.0
        eps, _ = _dpa().rdp.compute_epsilon(self._orders, rounds * self._round_rdp, self.delta)
        return float(eps)

    def rounds_within(self, epsilon: float, max_rounds: int) -> int:
        """The most rounds, up to ``max_rounds``, whose ε stays within ``epsilon``."""
        return bisect.bisect_right(range(1, max_rounds + 1), epsilon, key=self.epsilon)


def calibrate_noise_multiplier(
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    epsilon: float,
    delta: float,
    *,
    local: bool = False,
    amplified: bool = True,
) -> float:
    """The smallest z (to 1e-3) with which ``rounds`` rounds stay within (ε, δ), found by
    dp-accounting's :func:`~dp_accounting.calibrate_dp_mechanism`."""
    _check(num_clients, clients_per_round, delta)
    if rounds < 1 or not epsilon > 0:
        raise ConfigError(f"need rounds >= 1 and epsilon > 0, got {rounds} and {epsilon}")

    dpa = _dpa()

    def event(z: float) -> dp_accounting.DpEvent:
        one = round_event(num_clients, clients_per_round, z, local=local, amplified=amplified)
        return dpa.SelfComposedDpEvent(one, rounds)

    return float(
        dpa.calibrate_dp_mechanism(
            _accountant,
            event,
            epsilon,
            delta,
            bracket_interval=dpa.LowerEndpointAndGuess(0.01, 1.0),
            tol=1e-3,
        )
    )
