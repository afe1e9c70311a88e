"""From float vectors to the integers SecAgg sums, and back.

A vector is a list of :class:`Segment`, each with the interval [lo, hi] its values must
lie in. A value v is clipped to its interval (each clipped value is counted: nothing is
clipped silently) and stochastically rounded to an integer in [0, L]:
u = (v − lo)·L/(hi − lo), then ⌊u⌋ + Bernoulli(u − ⌊u⌋), so that the integer is unbiased.
L = ⌊(2^b − 1)/n⌋ for a round of at most n clients, which is the checked bound: the sum of
n integers of at most L stays below the modulus 2^b and never wraps. Decoding the sum of
m integers gives Σ v with an error below m·(hi − lo)/L per value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedge.errors import ConfigError

__all__ = ["Encoded", "Segment", "VectorCodec"]


@dataclass(frozen=True)
class Segment:
    """``length`` values named ``name`` that lie in [lo, hi]."""

    name: str
    length: int
    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise ConfigError(f"segment {self.name}: the interval [{self.lo}, {self.hi}] is empty")


@dataclass(frozen=True)
class Encoded:
    """One client's integers and how many of its values had to be clipped."""

    values: np.ndarray
    clipped: int


@dataclass(frozen=True)
class VectorCodec:
    """Encodes segments for rounds of at most ``max_clients`` clients modulo 2^``bits``."""

    segments: tuple[Segment, ...]
    bits: int
    max_clients: int

    def __post_init__(self) -> None:
        if self.max_clients < 1:
            raise ConfigError("a secure round needs at least one client")
        if self.levels < 2:
            raise ConfigError(
                f"secure aggregation: {self.max_clients} clients leave fewer than 2 "
                f"quantization levels in a {self.bits}-bit modulus; raise modulus_bits"
            )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.bits <= 32 else np.uint64)

    @property
    def levels(self) -> int:
        """L: the largest integer one client sends; n·L < 2^b."""
        return ((1 << self.bits) - 1) // self.max_clients

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)

    def step(self, segment: Segment) -> float:
        """The quantization step of ``segment``: (hi − lo)/L."""
        return (segment.hi - segment.lo) / self.levels

    def encode(self, parts: Mapping[str, torch.Tensor], generator: np.random.Generator) -> Encoded:
        out, clipped = [], 0
        for seg in self.segments:
            value = parts[seg.name].detach().reshape(-1).to(torch.float64).numpy()
            if value.shape != (seg.length,):
                raise ValueError(f"segment {seg.name}: {value.size} values, expected {seg.length}")
            if not np.isfinite(value).all():
                raise ValueError(f"segment {seg.name} holds NaN or Inf")
            clipped += int(((value < seg.lo) | (value > seg.hi)).sum())
            u = (np.clip(value, seg.lo, seg.hi) - seg.lo) * (self.levels / (seg.hi - seg.lo))
            low = np.floor(u)
            rounded = low + (generator.random(u.shape) < (u - low))
            out.append(np.minimum(rounded, self.levels).astype(self.dtype))
        return Encoded(np.concatenate(out), clipped)

    def decode(self, total: np.ndarray, count: int) -> dict[str, torch.Tensor]:
        """Σ v per segment from the sum of ``count`` clients' integers."""
        if count > self.max_clients:
            raise ValueError(f"{count} clients exceed the codec's bound of {self.max_clients}")
        out, offset = {}, 0
        for seg in self.segments:
            ints = total[offset : offset + seg.length].astype(np.float64)
            out[seg.name] = torch.from_numpy(ints * self.step(seg) + count * seg.lo)
            offset += seg.length
        return out

    @staticmethod
    def for_parts(
        parts: Mapping[str, torch.Tensor],
        bounds: Mapping[str, tuple[float, float]],
        *,
        bits: int,
        max_clients: int,
    ) -> VectorCodec:
        """A codec for tensors shaped like ``parts`` with ``bounds`` per name."""
        segments: Sequence[Segment] = [
            Segment(name, int(t.numel()), *bounds[name]) for name, t in parts.items()
        ]
        return VectorCodec(tuple(segments), bits, max_clients)
