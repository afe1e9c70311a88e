"""The real SecAgg+ protocol run in one process: every client's and the server's messages
pass through :func:`run_in_process`, with dropouts chosen before any stage.

Used by the simulation engines (through
:class:`~fedge.privacy.secagg.aggregation.SecureAggregation`), by the tests, and by
``benchmarks/privacy.py``, which reads the bytes each client sends and receives and the
CPU time of the clients and of the server from :class:`Traffic`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.privacy.secagg.crypto import SECRET_BYTES
from fedge.privacy.secagg.protocol import (
    STAGES,
    RoundSetup,
    SecAggClient,
    SecAggServer,
    View,
)

__all__ = ["Traffic", "run_in_process"]

_ID_BYTES = 16  # what a client id costs on the wire, for the byte counts


@dataclass
class Traffic:
    """Bytes each client sent and received, and CPU seconds, for one secure round."""

    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    client_cpu: dict[str, float] = field(default_factory=dict)
    server_cpu: float = 0.0

    def add(self, who: str, sent: int = 0, received: int = 0) -> None:
        self.sent[who] = self.sent.get(who, 0) + sent
        self.received[who] = self.received.get(who, 0) + received


def _sealed_bytes(box: Mapping[str, bytes]) -> int:
    return sum(len(c) + _ID_BYTES for c in box.values())


def run_in_process(
    setup: RoundSetup,
    inputs: Mapping[str, np.ndarray],
    *,
    degree: int,
    graph_seed: int = 0,
    drop_before: Mapping[str, Collection[str]] | None = None,
) -> tuple[np.ndarray, View, Traffic]:
    """Σ of the survivors' ``inputs`` through SecAgg+, and who survived.

    ``drop_before[stage]`` are the clients that vanish before answering ``stage`` (one of
    :data:`~fedge.privacy.secagg.protocol.STAGES`). Raises
    :class:`~fedge.privacy.secagg.protocol.SecAggAborted` when the dropouts are more than
    the round tolerates.
    """
    drop_before = drop_before or {}
    unknown = set(drop_before) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {STAGES}")
    gone: set[str] = set()
    traffic = Traffic()
    clock = time.process_time

    def alive(stage: str, members: Collection[str]) -> list[str]:
        gone.update(drop_before.get(stage, ()))
        return [m for m in members if m not in gone]

    def client_call(who: str, fn, *args):
        start = clock()
        out = fn(*args)
        traffic.client_cpu[who] = traffic.client_cpu.get(who, 0.0) + clock() - start
        return out

    def server_call(fn, *args):
        start = clock()
        out = fn(*args)
        traffic.server_cpu += clock() - start
        return out

    clients = {who: SecAggClient(who, setup) for who in inputs}
    server = SecAggServer(setup, inputs, degree, graph_seed)
    for who in alive("advertise", clients):
        keys = client_call(who, clients[who].advertise)
        traffic.add(who, sent=64)
        server_call(server.receive_keys, who, keys)
    server_call(server.close_advertise)
    for who in alive("share", server.members):
        neighbours = server.neighbours_of(who)
        traffic.add(who, received=len(neighbours) * (64 + 8 + _ID_BYTES))
        sealed = client_call(who, clients[who].share, neighbours)
        traffic.add(who, sent=_sealed_bytes(sealed))
        server_call(server.receive_shares, who, sealed)
    server_call(server.close_share)
    for who in alive("masked", server.sharers):
        box = server.shares_for(who)
        traffic.add(who, received=_sealed_bytes(box))
        y = client_call(who, clients[who].masked, box, inputs[who])
        traffic.add(who, sent=y.nbytes)
        server_call(server.receive_masked, who, y)
    view = server_call(server.close_masked)
    view_bytes = (len(view.survivors) + len(view.dropped)) * _ID_BYTES
    for who in alive("confirm", view.survivors):
        traffic.add(who, received=view_bytes)
        sealed = client_call(who, clients[who].confirm, view)
        traffic.add(who, sent=_sealed_bytes(sealed))
        server_call(server.receive_confirmations, who, sealed)
    server_call(server.close_confirm)
    for who in alive("unmask", view.survivors):
        if who not in server.confirmed:
            continue
        box = server.confirmations_for(who)
        traffic.add(who, received=_sealed_bytes(box))
        b_shares, key_shares = client_call(who, clients[who].unmask, box)
        traffic.add(who, sent=(len(b_shares) + len(key_shares)) * (SECRET_BYTES + _ID_BYTES))
        server_call(server.receive_unmask, who, b_shares, key_shares)
    total = server_call(server.finish)
    return total, view, traffic
