"""Messages that pass between the server half and the client half of an algorithm.

Model parameters travel as :data:`Params`: an ordered ``dict`` from parameter name (the
names of :func:`fedge.models.spec.build_model`) to a tensor. Every message is a frozen
dataclass, so state between rounds is explicit and never mutated in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = [
    "ClientTask",
    "ClientUpdate",
    "Params",
    "ServerState",
    "clone_params",
    "flatten",
    "flatten_by_name",
    "unflatten",
    "unflatten_by_name",
]

Params = dict[str, torch.Tensor]


def clone_params(params: Mapping[str, torch.Tensor]) -> Params:
    """A detached copy of ``params`` (same order, same dtypes)."""
    return {name: t.detach().clone() for name, t in params.items()}


def flatten(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All tensors of ``params`` concatenated into one float vector, in key order."""
    return torch.cat([t.reshape(-1) for t in params.values()])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Inverse of :func:`flatten`: cut ``vector`` into tensors shaped like ``like``."""
    out: Params = {}
    offset = 0
    for name, ref in like.items():
        out[name] = vector[offset : offset + ref.numel()].view(ref.shape).to(ref.dtype)
        offset += ref.numel()
    return out


def flatten_by_name(
    params: Mapping[str, torch.Tensor], names: Iterable[str] | None = None
) -> torch.Tensor:
    """:func:`flatten` in sorted name order (of ``names``, default ``params``'s): the order
    of vectors that cross the wire, where dicts arrive in the file's order, not the
    model's (safetensors sorts its names)."""
    return flatten({k: params[k] for k in sorted(names if names is not None else params)})


def unflatten_by_name(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Inverse of :func:`flatten_by_name`, in ``like``'s own order."""
    parts = unflatten(vector, {k: like[k] for k in sorted(like)})
    return {k: parts[k] for k in like}


@dataclass(frozen=True)
class ServerState:
    """The global state between two rounds.

    Attributes
    ----------
    params:
        Global model parameters.
    rounds_completed:
        Rounds aggregated into ``params`` so far (0 before the first round); in a
        deployment this is the model version. The round a client trains next is
        ``rounds_completed + 1`` (:attr:`ClientTask.round`).
    extras:
        Strategy-owned state, e.g. a server optimizer's moments; empty for FedAvg.
    """

    params: Params
    rounds_completed: int = 0
    extras: Mapping[str, Params] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientTask:
    """What a client receives for one round.

    Attributes
    ----------
    round:
        The round being trained (1-based): ``ServerState.rounds_completed + 1`` of the
        state the task was made from.
    params:
        The global model to start from.
    extras:
        Server state the strategy's client half needs (e.g. SCAFFOLD's control variate c).
    client_state:
        The client's own state from its previous participation (e.g. SCAFFOLD's c_i), or
        ``None`` on its first round. It stays with the client: in simulation the engine
        keeps it, on a device the device does.
    """

    round: int
    params: Params
    extras: Mapping[str, Params] = field(default_factory=dict)
    client_state: Mapping[str, Params] | None = None


@dataclass(frozen=True)
class ClientUpdate:
    """What a client reports after local training.

    Attributes
    ----------
    client:
        Who trained it: the client's index (``int``) in a simulation, its device id
        (``str``) in a deployment.
    params:
        The client's model after local training (w_k).
    num_samples:
        Number of local training examples (n_k), the FedAvg weight.
    num_steps:
        Local optimizer steps taken.
    metrics:
        Scalar local metrics, e.g. mean training loss.
    extras:
        Strategy-specific tensors sent to the server (e.g. SCAFFOLD's Δc_i).
    client_state:
        The client's new own state, kept by the client and never sent to the server.
    """

    client: int | str
    params: Params
    num_samples: int
    num_steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, Params] = field(default_factory=dict)
    client_state: Mapping[str, Params] | None = None
