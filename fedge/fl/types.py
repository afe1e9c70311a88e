"""Messages that pass between the server half and the client half of an algorithm.

Model parameters travel as :data:`Params`: an ordered ``dict`` from parameter name (the
names of :func:`fedge.models.spec.build_model`) to a tensor. Every message is a frozen
dataclass, so state between rounds is explicit and never mutated in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["ClientTask", "ClientUpdate", "Params", "ServerState", "clone_params"]

Params = dict[str, torch.Tensor]


def clone_params(params: Mapping[str, torch.Tensor]) -> Params:
    """A detached copy of ``params`` (same order, same dtypes)."""
    return {name: t.detach().clone() for name, t in params.items()}


@dataclass(frozen=True)
class ServerState:
    """The global state between two rounds.

    Attributes
    ----------
    params:
        Global model parameters.
    round:
        Number of rounds completed so far (0 before the first round).
    extras:
        Strategy-owned state, e.g. a server optimizer's moments; empty for FedAvg.
    """

    params: Params
    round: int = 0
    extras: Mapping[str, Params] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientTask:
    """What a client receives for one round: the model to start from and any extras
    the strategy's client half needs (e.g. a control variate)."""

    round: int
    params: Params
    extras: Mapping[str, Params] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientUpdate:
    """What a client reports after local training.

    Attributes
    ----------
    client_id:
        Index of the client in the federation.
    params:
        The client's model after local training (w_k).
    num_samples:
        Number of local training examples (n_k), the FedAvg weight.
    num_steps:
        Local optimizer steps taken.
    metrics:
        Scalar local metrics, e.g. mean training loss.
    """

    client_id: int
    params: Params
    num_samples: int
    num_steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)
