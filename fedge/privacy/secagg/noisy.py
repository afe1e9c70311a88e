"""From a clipped float delta to the noisy integers of distributed DP, and back.

The counterpart of :class:`~fedge.privacy.secagg.encoding.VectorCodec` for
``privacy.dp = "distributed"`` (:mod:`fedge.privacy.skellam` has the maths and the
bounds). A client's delta x (already clipped to L2 norm S; clipped again here, so that
the bound does not rest on the caller) becomes

    v = round_B(γ·x) + Sk(μᵢ/2, μᵢ/2)^d   mod 2^b

with round_B conditional randomized rounding to norm at most B and Sk Skellam noise of
variance μᵢ per coordinate. The values are signed, stored modulo 2^b (two's complement),
and the server decodes the unmasked sum as a centred integer in [−2^(b−1), 2^(b−1)),
divided by γ. It adds no noise of its own: the sum it unmasks already holds the
clients' noise.

The server chooses γ, B and μᵢ (:class:`~fedge.privacy.skellam.SkellamParameters`) and
sends them with the round's plan; a client uses them as sent, so that client and server
decode with the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedge.errors import FedgeError
from fedge.privacy.secagg.encoding import Encoded, Segment
from fedge.privacy.skellam import (
    POISSON_MEAN_LIMIT,
    SkellamParameters,
    conditional_rounding,
    skellam_noise,
)

__all__ = ["SkellamCodec"]


@dataclass(frozen=True)
class SkellamCodec:
    """Encodes a ``delta`` of ``segments[0].length`` values for distributed DP.

    Parameters
    ----------
    segments:
        One segment, ``delta``, in [−S, S].
    bits:
        b: values are modulo 2^b.
    max_clients:
        The most clients a round sums (the modulus bound holds for them).
    clip_norm:
        S, the L2 norm the delta is clipped to.
    scale:
        γ, integers per unit.
    norm_bound:
        B, the L2 norm of every rounded vector.
    client_variance:
        μᵢ, the variance of each client's Skellam noise per coordinate.
    min_survivors:
        The fewest clients whose sum may be unmasked (the noise is planned for them).
    """

    segments: tuple[Segment, ...]
    bits: int
    max_clients: int
    clip_norm: float
    scale: float
    norm_bound: float
    client_variance: float
    min_survivors: int

    def __post_init__(self) -> None:
        if len(self.segments) != 1 or self.segments[0].name != "delta":
            raise ValueError("distributed DP encodes exactly one segment, the delta")
        numbers = (self.clip_norm, self.scale, self.norm_bound, self.client_variance)
        if not all(math.isfinite(v) and v > 0 for v in numbers):
            raise ValueError("distributed DP needs a positive clip norm, scale, bound, variance")
        if self.norm_bound < self.scale * self.clip_norm:
            raise ValueError("the rounded norm bound is below the scaled clipping norm")
        if self.client_variance / 2 > POISSON_MEAN_LIMIT:
            raise ValueError(
                f"a client's Skellam noise of variance {self.client_variance:.4g} is above "
                f"the largest planned ({2 * POISSON_MEAN_LIMIT:.4g})"
            )
        if not 1 <= self.min_survivors <= self.max_clients:
            raise ValueError("the minimum of survivors must be in [1, max_clients]")

    @staticmethod
    def from_parameters(segment: Segment, parameters: SkellamParameters) -> SkellamCodec:
        if segment.length != parameters.dimension:
            raise FedgeError(
                f"the delta has {segment.length} values, distributed DP was planned for "
                f"{parameters.dimension}"
            )
        return SkellamCodec(
            segments=(segment,),
            bits=parameters.modulus_bits,
            max_clients=parameters.max_clients,
            clip_norm=parameters.clip_norm,
            scale=parameters.scale,
            norm_bound=parameters.norm_bound,
            client_variance=parameters.client_variance,
            min_survivors=parameters.min_survivors,
        )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.bits <= 32 else np.uint64)

    @property
    def length(self) -> int:
        return self.segments[0].length

    def quantize(
        self, parts: Mapping[str, torch.Tensor], generator: np.random.Generator
    ) -> np.ndarray:
        """round_B(γ·clip(x, S)) as signed int64 (draws from ``generator`` first)."""
        x = parts["delta"].detach().reshape(-1).to(torch.float64).numpy()
        if x.shape != (self.length,):
            raise ValueError(f"the delta has {x.size} values, expected {self.length}")
        if not np.isfinite(x).all():
            raise ValueError("the delta holds NaN or Inf")
        norm = float(np.linalg.norm(x))
        if norm > self.clip_norm:
            x = x * (self.clip_norm / norm)
        return conditional_rounding(x * self.scale, self.norm_bound, generator)

    def noise(self, generator: np.random.Generator) -> np.ndarray:
        """One client's Skellam noise: int64, variance μᵢ per coordinate."""
        return skellam_noise(self.length, self.client_variance, generator)

    def encode(self, parts: Mapping[str, torch.Tensor], generator: np.random.Generator) -> Encoded:
        """The quantized delta plus the noise, modulo 2^b (nothing is range-clipped)."""
        signed = self.quantize(parts, generator) + self.noise(generator)
        mask = np.uint64((1 << self.bits) - 1)
        return Encoded((signed.view(np.uint64) & mask).astype(self.dtype), 0)

    def centred(self, total: np.ndarray) -> np.ndarray:
        """The unmasked sum (in [0, 2^b)) as signed integers in [−2^(b−1), 2^(b−1))."""
        values = total.astype(np.uint64)
        if self.bits == 64:
            return values.view(np.int64)
        signed = values.astype(np.int64)
        return np.where(signed >= 1 << (self.bits - 1), signed - (1 << self.bits), signed)

    def decode(self, total: np.ndarray, count: int) -> dict[str, torch.Tensor]:
        """The noisy Σ clip(Δ) of ``count`` clients, in float units."""
        if count > self.max_clients:
            raise ValueError(f"{count} clients exceed the codec's bound of {self.max_clients}")
        if count < self.min_survivors:
            raise FedgeError(
                f"{count} clients were summed, the noise was planned for at least "
                f"{self.min_survivors}"
            )
        return {"delta": torch.from_numpy(self.centred(total) / self.scale)}

    def noise_report(self, survivors: int) -> dict[str, Any]:
        """What a round's metrics record of its noise, summed over ``survivors``."""
        variance = survivors * self.client_variance
        return {
            "dp": "distributed",
            "scale": self.scale,
            "norm_bound": self.norm_bound,
            "client_variance": self.client_variance,
            "noise_variance": variance,
            "noise_std": math.sqrt(variance) / self.scale,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "clip_norm": self.clip_norm,
            "scale": self.scale,
            "norm_bound": self.norm_bound,
            "client_variance": self.client_variance,
            "min_survivors": self.min_survivors,
        }

    @staticmethod
    def from_json(
        data: Mapping[str, Any], segments: tuple[Segment, ...], bits: int, max_clients: int
    ) -> SkellamCodec:
        return SkellamCodec(
            segments=segments,
            bits=bits,
            max_clients=max_clients,
            clip_norm=float(data["clip_norm"]),
            scale=float(data["scale"]),
            norm_bound=float(data["norm_bound"]),
            client_variance=float(data["client_variance"]),
            min_survivors=int(data["min_survivors"]),
        )
