"""SecAgg+ parameters: the neighbourhood degree k and the Shamir threshold t, and the graph.

Bell, Bonawitz, Gascón, Lepoint, Raykova. "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead". CCS 2020. Clients mask only with their k neighbours on a
random k-regular Harary graph and share their secrets t-out-of-k among them.

:func:`find_parameters` picks the smallest even k (and a t) such that, with n clients of
which a fraction α may collude with the server and a fraction δ may drop out:

* security (2^-40): the graph of honest survivors stays connected (a union bound over
  pairs of gaps of k/2 consecutive bad clients on the ring), and no client has t or more
  corrupt neighbours, who could otherwise rebuild its secrets (hypergeometric tail, a
  union bound over clients; the 2^-40 is split between the two events);
* correctness (2^-20): every client keeps at least t surviving neighbours, so that its
  secrets can be rebuilt whether it survives or not.

It follows the method of Google's federated-compute parameter finder
(``fcp/secagg/server/graph_parameter_finder.cc``) for a curious (semi-honest) server, and
for a semi-malicious one (t above (k + t_corrupt)/2), with one difference: Shamir needs
t ≥ 2, and where that t breaks the correctness bound (small cohorts) fedge grows k
instead of accepting a round that would likely abort. When no k below n − 1 qualifies,
the graph is complete: classic SecAgg.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from fedge.errors import ConfigError

__all__ = ["GraphParameters", "find_parameters", "harary_neighbours"]

SECURITY_BITS = 40
CORRECTNESS_BITS = 20
_SMALL = 1e-14  # keeps floating-point rounding of α·n and δ·n on the safe side

Adversary = Literal["curious", "semi-malicious"]


@dataclass(frozen=True)
class GraphParameters:
    """k (neighbours of each client) and t (shares needed to rebuild a secret) for n."""

    clients: int
    degree: int
    threshold: int

    @property
    def complete(self) -> bool:
        return self.degree >= self.clients - 1


def _log_hypergeom_pmf(x: int, total: int, marked: int, drawn: int) -> float:
    if x < max(0, drawn - (total - marked)) or x > min(drawn, marked):
        return -math.inf
    lg = math.lgamma
    return (
        lg(marked + 1)
        - lg(x + 1)
        - lg(marked - x + 1)
        + lg(total - marked + 1)
        - lg(drawn - x + 1)
        - lg(total - marked - drawn + x + 1)
        - lg(total + 1)
        + lg(drawn + 1)
        + lg(total - drawn + 1)
    )


def _pmf(total: int, marked: int, drawn: int) -> list[float]:
    """P[X = x] for x = 0..drawn, X ~ Hypergeometric(total, marked, drawn)."""
    return [math.exp(_log_hypergeom_pmf(x, total, marked, drawn)) for x in range(drawn + 1)]


def _log_disconnected(n: int, k: int, bad: int) -> float:
    """log of a union bound on P[the Harary graph minus ``bad`` random nodes is
    disconnected]: that needs two disjoint runs of k/2 consecutive bad nodes on the ring."""
    if k > bad:
        return -math.inf
    pairs = math.log(n) + math.log(n - k - 1) - math.log(2)
    lg = math.lgamma
    return pairs + lg(bad + 1) + lg(n - k + 1) - lg(n + 1) - lg(bad - k + 1)


def _threshold_for(
    n: int, k: int, corrupt: float, dropout: float, adversary: Adversary
) -> int | None:
    per_event = 2.0 ** -(SECURITY_BITS + 1)  # the 2^-40 split over two bad events
    corrupt_clients = math.floor((corrupt + _SMALL) * n)
    dropped = math.floor((dropout + _SMALL) * n)
    if _log_disconnected(n, k, corrupt_clients + dropped) >= math.log(per_event):
        return None
    # smallest t with P[#corrupt neighbours ≥ t] ≤ 2^-41 / n
    pmf, tail, t_low = _pmf(n, corrupt_clients, k), 0.0, k + 1
    while t_low > 0 and tail + pmf[t_low - 1] <= per_event / n:
        t_low -= 1
        tail += pmf[t_low]
    if adversary == "semi-malicious":
        t_low = math.ceil((t_low - 1 + k - 1.25) / 2) + 1
    # largest t with P[#surviving neighbours < t] ≤ 2^-20 / n
    surviving = math.ceil((1 - dropout - _SMALL) * n)
    fail = 2.0**-CORRECTNESS_BITS / n
    pmf, below, t_high = _pmf(n, surviving, k), 0.0, 0
    while t_high < k and below + pmf[t_high] <= fail:
        below += pmf[t_high]
        t_high += 1
    # Shamir needs t >= 2; unlike federated-compute, which then returns t = 2 above the
    # correctness bound (small cohorts), look for a larger k that keeps the bound
    t = max(t_low, 2)
    return t if t <= t_high else None


def find_parameters(
    clients: int,
    *,
    dropout: float = 0.3,
    corrupt: float = 0.05,
    adversary: Adversary = "curious",
) -> GraphParameters:
    """k and t for a cohort of ``clients`` that tolerates a fraction ``dropout`` of
    dropouts and ``corrupt`` of clients colluding with the server (see the module)."""
    if clients < 3:
        raise ConfigError(f"secure aggregation needs at least 3 clients per round, got {clients}")
    if not 0 <= dropout < 1 or not 0 <= corrupt < 1:
        raise ConfigError("secure aggregation: dropout and corrupt must be fractions in [0, 1)")
    load = corrupt + dropout if adversary == "curious" else corrupt + 2 * dropout
    if load > 0.9:
        raise ConfigError(
            f"secure aggregation cannot tolerate dropout={dropout} with corrupt={corrupt} "
            f"against a {adversary} server: the sum must stay at most 0.9"
            + (" (dropout counts twice)" if adversary != "curious" else "")
        )
    for k in range(2, clients - 1, 2):
        t = _threshold_for(clients, k, corrupt, dropout, adversary)
        if t is not None:
            return GraphParameters(clients, k, t)
    # complete graph: t must exceed the corrupt clients and fit the survivors
    k = clients - 1
    corrupt_clients = math.floor((corrupt + _SMALL) * clients)
    t_low = corrupt_clients + 1
    if adversary == "semi-malicious":
        t_low = max(t_low, math.floor((k + corrupt_clients) / 2) + 1)
    t_high = math.ceil((1 - dropout - _SMALL) * clients) - 1  # surviving neighbours
    if t_high < max(t_low, 2):
        raise ConfigError(
            f"secure aggregation: no threshold fits {clients} clients with dropout={dropout} "
            f"and corrupt={corrupt}; sample more clients per round or tolerate fewer dropouts"
        )
    return GraphParameters(clients, k, max(t_low, 2))


def harary_neighbours(members: list[str], degree: int, seed: int) -> dict[str, list[str]]:
    """The neighbours of each member on a Harary graph H(degree, n) whose ring order is a
    permutation of ``members`` drawn from ``seed``: each is linked to the degree/2 members
    on either side. A degree of n − 1 or more gives the complete graph."""
    n = len(members)
    ring = sorted(members)
    random.Random(seed).shuffle(ring)
    if degree >= n - 1:
        return {m: [o for o in ring if o != m] for m in ring}
    half = degree // 2
    out: dict[str, list[str]] = {}
    for pos, member in enumerate(ring):
        out[member] = [ring[(pos + d) % n] for d in range(-half, half + 1) if d != 0]
    return out
