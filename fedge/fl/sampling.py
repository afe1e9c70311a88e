"""Which clients take part in a round."""

from __future__ import annotations

import numpy as np

from fedge.errors import ConfigError

__all__ = ["clients_per_round", "sample_clients"]


def clients_per_round(
    num_clients: int, *, count: int | None = None, fraction: float | None = None
) -> int:
    """Cohort size: ``count``, or ``max(1, round(fraction · num_clients))`` (McMahan's C·K).

    Raises :class:`ConfigError` when more clients are asked for than exist.
    """
    if (count is None) == (fraction is None):
        raise ConfigError("give exactly one of clients_per_round and fraction")
    if count is None:
        if not 0 < fraction <= 1:  # type: ignore[operator]
            raise ConfigError(f"fraction of clients per round must be in (0, 1], got {fraction}")
        count = max(1, round(fraction * num_clients))  # type: ignore[operator]
    if count < 1:
        raise ConfigError(f"clients per round must be >= 1, got {count}")
    if count > num_clients:
        raise ConfigError(
            f"clients per round ({count}) is more than the number of clients ({num_clients})"
        )
    return count


def sample_clients(num_clients: int, count: int, *, seed: int, round: int) -> np.ndarray:
    """``count`` distinct client indices for ``round``, sorted, drawn uniformly without
    replacement from a stream that depends only on ``(seed, round)``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, round, 0x5A3]))
    if count == num_clients:
        return np.arange(num_clients)
    return np.sort(rng.choice(num_clients, size=count, replace=False))
