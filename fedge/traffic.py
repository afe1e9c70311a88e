"""Bytes on the network, counted the same way by every kind of training run.

A federated simulation, a training job in one process and a data-parallel job all write
the same counters into each line of their ``metrics.jsonl`` (one line per round or per
epoch) and the same totals into ``summary.json``, so that runs of different kinds can be
compared, and so that later transports (the deployment server, compression, secure
aggregation) can report the same numbers.

Units are bytes of tensor payload: ``numel × element size`` of every tensor a message
carries, as it is held in memory (float32 weights are 4 bytes each). Framing (HTTP,
safetensors headers, TCP/IP) is not counted: it depends on the transport, the payload
does not.

Counters of one line (the round's or epoch's own, not running totals):

``examples``
    Training examples processed (forward and backward passes): one epoch over ``n``
    examples is ``n``; ``examples / num_train`` summed over lines is the epochs of compute.
``participants``
    Parties that trained in the line: a round's clients, a job's workers.
``bytes_down``
    Bytes the participants received. Federated: the task every client of the round
    downloads (the global model and the strategy's server extras, e.g. SCAFFOLD's c), once
    per client. Data-parallel: what the ranks receive in all-reduces.
``bytes_up``
    Bytes the participants sent. Federated: every update that arrives (the local model and
    the strategy's extras such as SCAFFOLD's Δc_i, also updates that the server then
    rejects). Data-parallel: what the ranks send in all-reduces. A client's own state
    (SCAFFOLD's c_i) stays on the device and is not counted.
``bytes_data``
    Raw training data that left its owners' devices: features and labels of every
    training example a centralized or data-parallel job trains on, counted once, in its
    first epoch (the data has to reach the cloud before training). Zero for federated runs.
    The test set is the evaluator's and is not counted for any kind of run.
``samples_uploaded``
    Training examples that left their owners' devices (with ``bytes_data``).
``bytes_sent``
    Every byte put on a network link, counted once: federated ``bytes_down + bytes_up``
    (the server sends the tasks, the clients the updates); data-parallel ``bytes_up``
    (peers: what one rank sends another receives, so ``bytes_down`` is the same bytes)
    plus ``bytes_data``; centralized ``bytes_data``.

All-reduce traffic is counted as a ring all-reduce, gloo's algorithm for CPU tensors:
an all-reduce of ``S`` bytes over ``W`` ranks is a reduce-scatter and an all-gather of
``W - 1`` steps each, in which every rank sends one of ``W`` chunks of the payload, so the
ranks together send (and receive) ``2 (W - 1) S`` bytes, ``2 (W - 1) / W · S`` each.

:func:`traffic_summary` turns the lines into the summary totals, for every kind of run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedge.fl.types import ClientTask, ClientUpdate

__all__ = [
    "LINE_KEYS",
    "AllReduceCounter",
    "UpdateMeter",
    "fingerprint_test_set",
    "message_nbytes",
    "ring_allreduce_bytes",
    "task_nbytes",
    "tensors_nbytes",
    "traffic_summary",
    "update_nbytes",
]

LINE_KEYS = (
    "examples",
    "participants",
    "bytes_down",
    "bytes_up",
    "bytes_data",
    "samples_uploaded",
    "bytes_sent",
)


def tensors_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Payload bytes of ``tensors``: the sum of ``numel × element_size``."""
    return sum(t.numel() * t.element_size() for t in tensors)


def message_nbytes(params: Mapping[str, torch.Tensor], extras: Mapping[str, Any]) -> int:
    """Payload bytes of a message holding ``params`` and a strategy's ``extras`` (a mapping
    of names to tensors or to mappings of tensors)."""
    total = tensors_nbytes(params.values())
    for value in extras.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        else:
            total += tensors_nbytes(value.values())
    return total


def task_nbytes(task: ClientTask) -> int:
    """Bytes one client downloads for ``task``: the global model and the server extras
    (its own state stays on the device)."""
    return message_nbytes(task.params, task.extras)


def update_nbytes(update: ClientUpdate) -> int:
    """Bytes one client uploads with ``update``: its model and its extras (its own new
    state stays on the device)."""
    return message_nbytes(update.params, update.extras)


def ring_allreduce_bytes(payload: int, world_size: int) -> int:
    """Bytes all ``world_size`` ranks together send in a ring all-reduce of ``payload``
    bytes (and receive: the same bytes), ``2 (W - 1) · payload``."""
    return 2 * (world_size - 1) * payload


@dataclass
class AllReduceCounter:
    """All-reduces of one rank, counted as they are issued (every rank issues the same
    ones, so rank 0's counter describes the whole group).

    Attributes
    ----------
    calls:
        All-reduces issued.
    payload:
        Bytes this rank contributed to them (the size of each reduced tensor).
    sent:
        Bytes all ranks together sent in them (:func:`ring_allreduce_bytes`).
    """

    calls: int = 0
    payload: int = 0
    sent: int = 0

    def add(self, tensor: torch.Tensor, world_size: int) -> None:
        size = tensor.numel() * tensor.element_size()
        self.calls += 1
        self.payload += size
        self.sent += ring_allreduce_bytes(size, world_size)


@dataclass
class UpdateMeter:
    """Counts a federated round's traffic as its updates stream to the server.

    :meth:`downloads` adds the task's size once per client it goes to, :meth:`uploads`
    passes the updates through unchanged, adding each one's size; :meth:`line` ends the
    round. ``seen`` holds every client that took part so far.
    """

    bytes_down: int = 0
    bytes_up: int = 0
    participants: set[int | str] = field(default_factory=set)
    seen: set[int | str] = field(default_factory=set)

    def downloads(self, task: ClientTask, clients: Iterable[int | str]) -> None:
        """The round's ``task`` goes to each of ``clients``."""
        members = [int(k) if not isinstance(k, str) else k for k in clients]
        self.bytes_down += task_nbytes(task) * len(members)
        self.participants.update(members)
        self.seen.update(members)

    def uploads(self, updates: Iterable[ClientUpdate]) -> Iterator[ClientUpdate]:
        for update in updates:
            self.bytes_up += update_nbytes(update)
            yield update

    def line(self, examples: int) -> dict[str, int]:
        """The round's counters (see the module docstring); the meter starts over."""
        line = {
            "examples": int(examples),
            "participants": len(self.participants),
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "bytes_data": 0,
            "samples_uploaded": 0,
            "bytes_sent": self.bytes_down + self.bytes_up,
        }
        self.bytes_down = self.bytes_up = 0
        self.participants = set()
        return line


def traffic_summary(
    history: Sequence[Mapping[str, Any]], *, num_train: int, participants: int
) -> dict[str, Any]:
    """The summary totals of a run's metric lines.

    Parameters
    ----------
    history:
        The run's lines, each with the counters of :data:`LINE_KEYS`.
    num_train:
        Training examples of the dataset (the denominator of ``epochs_of_compute``).
    participants:
        Distinct parties that trained over the whole run (a federated run's clients that
        took part at least once; a job's workers).
    """
    totals = {key: sum(int(m.get(key, 0)) for m in history) for key in LINE_KEYS}
    del totals["participants"]
    return {
        **totals,
        "participants": participants,
        "epochs_of_compute": totals["examples"] / max(num_train, 1),
        "bytes_up_per_participant": totals["bytes_up"] / max(participants, 1),
        "bytes_down_per_participant": totals["bytes_down"] / max(participants, 1),
    }


def fingerprint_test_set(x: torch.Tensor, y: torch.Tensor) -> str:
    """A fingerprint of a test set: SHA-256 of its float32 features (int64 tokens as they
    are), then its int64 labels (float32 boxes for detection), in order. Runs evaluated on
    the same examples have the same fingerprint, whatever loaded them."""
    if x.is_floating_point():
        x = x.to(torch.float32)
    digest = hashlib.sha256()
    digest.update(x.contiguous().numpy().tobytes())
    y = y.to(torch.float32) if y.is_floating_point() else y.to(torch.int64)
    digest.update(y.contiguous().numpy().tobytes())
    return digest.hexdigest()
