"""The Skellam mechanism: integer noise that clients add before secure aggregation.

Agarwal, Kairouz, Liu. "The Skellam Mechanism for Differentially Private Federated
Learning". NeurIPS 2021.

**The noise.** Sk(λ, λ) = Poisson(λ) − Poisson(λ) is an integer with mean 0 and variance
2λ, and independent Skellams add up to a Skellam: Sk(λ₁, λ₁) + Sk(λ₂, λ₂) = Sk(λ₁ + λ₂,
λ₁ + λ₂). So clients that each add Sk(μᵢ/2, μᵢ/2) per coordinate to the integer vector
they mask put Skellam noise of variance Σμᵢ on the sum, and a server that unmasks the sum
never sees it without noise (:func:`skellam_noise`).

**From a float delta to integers.** The sensitivity must hold for the integers the
clients send, so each client

1. clips its delta to L2 norm S (in float);
2. scales it by γ integers per unit (its norm is now at most γS);
3. rounds it by conditional randomized rounding (Kairouz, Liu, Steinke, "The Distributed
   Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML
   2021, Sect. 4.1): each coordinate rounds up with probability its fractional part
   (unbiased), and the vector is drawn again until its norm is at most
   B = min(γS + √d, √((γS)² + d/4 + √(2 ln(1/β))·(γS + √d/2))) (:func:`rounded_norm_bound`).
   No coordinate moves by 1 or more, so any draw meets γS + √d; randomized rounding
   concentrates, so a draw meets the second bound except with probability β = e^(−1/2):
   a draw or two on average. The bound is enforced, not assumed: every vector a client
   sends has norm at most B.

**Sensitivity.** Neighbouring federations differ by one client's data being replaced
(as in :mod:`fedge.privacy.ledger`), which moves the integer sum by a vector w with
‖w‖₂ ≤ 2B = Δ₂, and an integer vector has ‖w‖₁ ≤ min(√d·‖w‖₂, ‖w‖₂²), so Δ₁ = min(√d·Δ₂,
Δ₂²).

**Privacy of one round** (Agarwal et al., the RDP bound of the multidimensional Skellam
mechanism, for integer orders α > 1; μ is the variance of the noise on the sum):

    ε(α) ≤ α·Δ₂²/(2μ) + min(((2α − 1)·Δ₂² + 6·Δ₁)/(4μ²), 3·Δ₁/(2μ))    (:func:`skellam_rdp`)

The first term is the Gaussian mechanism's with σ² = μ. fedge plans μ = (z·B)²: the
first term is then exactly that of the Gaussian noise multiplier z of central DP-FedAvg
(z/2 for the replace-one sensitivity), and the second is the price of integers, small
once B is large. Rounds compose by adding RDP curves; the curve becomes (ε, δ) by the
conversion dp-accounting applies to its own curves (:func:`rdp_to_epsilon`). Nothing
here is amplified by sampling: the server chooses the cohort, so the ledger counts every
round as one Skellam mechanism (conservative; :class:`SkellamParameters`).

**The modulus.** SecAgg sums modulo 2^b and the sum is decoded as a centred integer in
[−2^(b−1), 2^(b−1)). The clients' integers add up to at most n·(γS + 1) per coordinate
for n clients (worst case, every client at the bound), and the noise stays within the
tail t of :func:`skellam_tail`, chosen so that any coordinate of the round exceeds it
with probability at most 2^-40 (a Chernoff bound, union over the coordinates). γ is the
largest scale with n·(γS + 1) + t < 2^(b−1), so that a sum wraps with probability at most
2^-40 per round (a wrap would spoil a coordinate of that round's update, not the
privacy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedge.errors import ConfigError, FedgeError

__all__ = [
    "RDP_ORDERS",
    "SkellamParameters",
    "calibrate_skellam",
    "conditional_rounding",
    "rdp_to_epsilon",
    "rounded_norm_bound",
    "skellam_noise",
    "skellam_rdp",
    "skellam_tail",
]

#: The RDP orders the ledger evaluates: integers, for which the Skellam bound is stated.
RDP_ORDERS: tuple[int, ...] = (*range(2, 64), 80, 96, 128, 160, 192, 256, 384, 512, 1024)
#: β of conditional randomized rounding: a draw exceeds the tight bound with at most this
#: probability.
ROUNDING_BETA = math.exp(-0.5)
#: The probability, per round, that some coordinate of the noisy sum wraps the modulus.
WRAP_PROBABILITY = 2.0**-40
#: The largest Poisson mean a client draws: γ is capped so that μᵢ/2 stays below it. A
#: larger scale would buy nothing: the rounding error is then below a millionth of the
#: noise.
POISSON_MEAN_LIMIT = 2.0**40
#: Conditional rounding gives up after this many draws (each succeeds with
#: probability at least 1 − β).
MAX_ROUNDING_DRAWS = 1000


def skellam_noise(length: int, variance: float, generator: np.random.Generator) -> np.ndarray:
    """``length`` independent draws of Sk(variance/2, variance/2): int64, variance
    ``variance``."""
    if not variance >= 0:
        raise ValueError(f"the variance must be >= 0, got {variance}")
    if variance == 0:
        return np.zeros(length, dtype=np.int64)
    lam = variance / 2
    first = generator.poisson(lam, length).astype(np.int64)
    return first - generator.poisson(lam, length).astype(np.int64)


def skellam_rdp(
    orders: Sequence[float] | np.ndarray, *, l2: float, l1: float, variance: float
) -> np.ndarray:
    """The Skellam mechanism's RDP ε(α) at each integer order α, for integer L2 and L1
    sensitivities ``l2``, ``l1`` and noise of variance ``variance`` μ on the sum:
    α·Δ₂²/(2μ) + min(((2α − 1)·Δ₂² + 6·Δ₁)/(4μ²), 3·Δ₁/(2μ)) (Agarwal et al. 2021)."""
    a = np.asarray(orders, dtype=np.float64)
    if not variance > 0:
        raise ValueError(f"the noise variance must be positive, got {variance}")
    gaussian = a * l2**2 / (2 * variance)
    discrete = np.minimum(
        ((2 * a - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance)
    )
    return gaussian + discrete


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> float:
    """ε at ``delta`` of an RDP curve: dp-accounting's conversion (Canonne, Kamath,
    Steinke 2020, Proposition 12), the one its RDP accountant applies to its own curves.
    dp-accounting has no Skellam event, so the curve is composed here (RDP adds up over
    rounds) and only converted there."""
    from dp_accounting import rdp as dpa_rdp  # SciPy inside: import when needed

    epsilon, _ = dpa_rdp.compute_epsilon(list(orders), list(rdp), delta)
    return float(epsilon)


def rounded_norm_bound(norm: float, dimension: int, beta: float = ROUNDING_BETA) -> float:
    """B: the norm that conditional randomized rounding of a vector of norm ``norm`` in
    ``dimension`` coordinates is held to (see the module)."""
    root = math.sqrt(dimension)
    squared = norm**2 + dimension / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + root / 2)
    return min(norm + root, math.sqrt(squared))


def conditional_rounding(x: np.ndarray, bound: float, generator: np.random.Generator) -> np.ndarray:
    """``x`` randomly rounded to int64 (up with probability the fractional part), drawn
    again until the L2 norm is at most ``bound``."""
    low = np.floor(x)
    fraction = x - low
    # float64 sums of squares are exact to ~1e-10 relative; the margin keeps the bound
    limit = bound**2 * (1 - 1e-9)
    for _ in range(MAX_ROUNDING_DRAWS):
        rounded = low + (generator.random(x.shape) < fraction)
        if float(np.dot(rounded, rounded)) <= limit:
            return rounded.astype(np.int64)
    raise FedgeError(
        f"conditional rounding found no rounding within norm {bound:.6g} in "
        f"{MAX_ROUNDING_DRAWS} draws"
    )


def skellam_tail(variance: float, probability: float, count: int = 1) -> float:
    """t such that ``count`` independent Sk(μ/2, μ/2) of variance μ all stay within ±t,
    except with probability at most ``probability``.

    Chernoff: the moment generating function of Sk(μ/2, μ/2) is exp(μ(cosh s − 1)), so
    P(X ≥ t) ≤ exp(μ(√(1 + y²) − 1) − t·asinh(y)) with y = t/μ (the best s, asinh y);
    twice that bounds |X|, and the union bound covers ``count`` coordinates."""
    if variance == 0:
        return 0.0
    target = math.log(probability / (2 * count))

    def log_tail(t: float) -> float:
        y = t / variance
        return variance * y * y / (math.sqrt(1 + y * y) + 1) - t * math.asinh(y)

    lo, hi = 0.0, math.sqrt(variance)
    while log_tail(hi) > target:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if log_tail(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return hi


@dataclass(frozen=True)
class SkellamParameters:
    """One round of distributed DP, resolved: the scale, the norm bound, the noise.

    Parameters
    ----------
    clip_norm:
        S, the L2 bound of every client's delta (float units).
    noise_multiplier:
        z: the noise on the sum has variance μ = (z·B)² (integer units), i.e. standard
        deviation z times a client's rounded norm bound B.
    dimension:
        d, the number of values each client sends.
    max_clients:
        n, the most clients whose integers a round sums (the modulus bound holds for them).
    min_survivors:
        The fewest clients whose masked vectors a round may unmask; fewer abort the round.
    colluding:
        Clients that may collude with the server and know their own noise: the noise is
        planned for ``min_survivors − colluding`` honest clients.
    modulus_bits:
        b: SecAgg sums modulo 2^b.

    Each client adds Skellam noise of variance μ/(min_survivors − colluding), so that any
    sum the server unmasks holds at least μ of honest noise.
    """

    clip_norm: float
    noise_multiplier: float
    dimension: int
    max_clients: int
    min_survivors: int
    colluding: int = 0
    modulus_bits: int = 32
    #: γ, integers per unit of the delta.
    scale: float = field(init=False)
    #: B, the L2 norm every client's integer vector is held to.
    norm_bound: float = field(init=False)

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and self.noise_multiplier > 0):
            raise ConfigError("distributed DP needs a positive clipping norm and noise multiplier")
        if self.dimension < 1 or self.max_clients < 1:
            raise ConfigError("distributed DP needs at least one value and one client")
        if not 0 < self.noise_clients <= self.min_survivors <= self.max_clients:
            raise ConfigError(
                f"distributed DP: {self.min_survivors} surviving clients of {self.max_clients}, "
                f"{self.colluding} of them colluding, leave no honest client to add the "
                "noise: lower privacy.secure_aggregation.dropout or corrupt, or raise the "
                "clients per round"
            )
        scale = self._largest_scale()
        object.__setattr__(self, "scale", scale)
        object.__setattr__(
            self, "norm_bound", rounded_norm_bound(scale * self.clip_norm, self.dimension)
        )
        if self.norm_bound > 2 * scale * self.clip_norm:
            raise ConfigError(
                f"distributed DP: a {self.modulus_bits}-bit modulus leaves {scale:.3g} integers "
                f"per unit for {self.max_clients} clients, and rounding {self.dimension} values "
                "would more than double the sensitivity: raise modulus_bits"
            )

    @classmethod
    def for_cohort(
        cls,
        *,
        clip_norm: float,
        noise_multiplier: float,
        dimension: int,
        clients_per_round: int,
        max_clients: int,
        dropout: float,
        corrupt: float,
        modulus_bits: int,
    ) -> SkellamParameters:
        """The parameters for cohorts of ``clients_per_round`` (at most ``max_clients``
        take part) of which a fraction ``dropout`` may drop out and a fraction ``corrupt``
        (of ``max_clients``) collude with the server, as SecAgg+ is configured."""
        return cls(
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            dimension=dimension,
            max_clients=max_clients,
            min_survivors=clients_per_round - math.floor(dropout * clients_per_round),
            colluding=math.floor(corrupt * max_clients),
            modulus_bits=modulus_bits,
        )

    # --- the scale ----------------------------------------------------------------------

    def _fits(self, scale: float) -> bool:
        """Whether ``scale`` keeps the noisy sum of ``max_clients`` clients inside the
        modulus (but for 2^-40) and the clients' Poisson means below the limit."""
        norm = scale * self.clip_norm
        bound = rounded_norm_bound(norm, self.dimension)
        client = (self.noise_multiplier * bound) ** 2 / self.noise_clients
        if client / 2 > POISSON_MEAN_LIMIT:
            return False
        signal = self.max_clients * min(norm + 1, bound)
        tail = skellam_tail(self.max_clients * client, WRAP_PROBABILITY, self.dimension)
        return signal + tail < 2 ** (self.modulus_bits - 1)

    def _largest_scale(self) -> float:
        """The largest γ that fits, by bisection on log γ."""
        hi = 2 ** (self.modulus_bits - 1) / (self.max_clients * self.clip_norm)
        lo = hi * 2.0**-64
        if not self._fits(lo):
            raise ConfigError(
                f"distributed DP: the noisy sum of {self.max_clients} clients does not fit "
                f"a {self.modulus_bits}-bit modulus: raise modulus_bits"
            )
        for _ in range(100):
            mid = math.sqrt(lo * hi)
            if self._fits(mid):
                lo = mid
            else:
                hi = mid
            if hi / lo < 1 + 1e-9:
                break
        return lo

    # --- the noise ----------------------------------------------------------------------

    @property
    def noise_clients(self) -> int:
        """The honest survivors whose noise the sum is sure to hold."""
        return self.min_survivors - self.colluding

    @property
    def variance(self) -> float:
        """μ = (z·B)²: the planned variance of the noise on the sum (integer units)."""
        return (self.noise_multiplier * self.norm_bound) ** 2

    @property
    def client_variance(self) -> float:
        """μᵢ = μ/(min_survivors − colluding): what each client adds."""
        return self.variance / self.noise_clients

    @property
    def noise_std(self) -> float:
        """√μ/γ: the planned noise standard deviation on the sum, per coordinate, in float
        units (z·S times the rounding's inflation B/(γS))."""
        return math.sqrt(self.variance) / self.scale

    # --- privacy ------------------------------------------------------------------------

    @property
    def sensitivity(self) -> tuple[float, float]:
        """(Δ₂, Δ₁) of the integer sum when one client's data is replaced."""
        l2 = 2 * self.norm_bound
        return l2, min(math.sqrt(self.dimension) * l2, l2 * l2)

    def rdp(self, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
        """One round's RDP curve (the sum holds at least μ of honest noise)."""
        l2, l1 = self.sensitivity
        return skellam_rdp(orders, l2=l2, l1=l1, variance=self.variance)

    def epsilon(self, rounds: int, delta: float) -> float:
        """ε at ``delta`` after ``rounds`` rounds."""
        if rounds <= 0:
            return 0.0
        return rdp_to_epsilon(RDP_ORDERS, rounds * self.rdp(), delta)


def calibrate_skellam(
    parameters: Callable[[float], SkellamParameters], rounds: int, epsilon: float, delta: float
) -> float:
    """The smallest noise multiplier z (to 1e-3) with which ``parameters(z)`` stays within
    (``epsilon``, ``delta``) after ``rounds`` rounds, by bisection."""
    if rounds < 1 or not epsilon > 0:
        raise ConfigError(f"need rounds >= 1 and epsilon > 0, got {rounds} and {epsilon}")

    def fits(z: float) -> bool:
        return parameters(z).epsilon(rounds, delta) <= epsilon

    hi = 1.0
    while not fits(hi):
        hi *= 2
        if hi > 2.0**20:
            raise ConfigError(f"no noise multiplier reaches ε = {epsilon:g} in {rounds} rounds")
    lo = hi / 2
    while lo > 1e-3 and fits(lo):
        lo, hi = lo / 2, lo
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
