"""SecAgg+ on the deployment server: one open round's protocol, rebuilt from stored
messages after a restart.

A secure round runs like any other until enough devices have trained (the round's target,
or its deadline with a quorum); instead of their updates, the devices post their public
keys (the ``advertise`` stage). Then four more stages follow, each with its own deadline
(``privacy.secure_aggregation.stage_seconds``): ``share``, ``masked``, ``confirm`` and
``unmask`` (:mod:`fedge.privacy.secagg.protocol`). A device asks
``GET /v1/rounds/{round}/secagg`` for its input to the open stage and posts its answer to
``/v1/rounds/{round}/secagg/{stage}``. A stage ends when every device it waits for has
answered, or at its deadline; the server then never sees more than the masked vectors and
their sum.

Every accepted message is stored (SQLite, one transaction) before the device hears 201, and
the opening of every stage is recorded, so a restarted server replays them into a fresh
:class:`~fedge.privacy.secagg.protocol.SecAggServer` and continues where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from fedge.errors import StaleUpdate
from fedge.privacy.secagg import RoundPlan, SecAggServer
from fedge.privacy.secagg.crypto import SecAggRefused
from fedge.privacy.secagg.messages import (
    decode_json,
    decode_masked,
    keys_from_json,
    neighbours_to_json,
    sealed_from_json,
    sealed_to_json,
    shares_from_json,
    view_to_json,
)
from fedge.privacy.secagg.noisy import SkellamCodec

__all__ = ["STAGES", "SecureRound"]

STAGES = ("advertise", "share", "masked", "confirm", "unmask")


def graph_seed(plan: RoundPlan) -> int:
    """The ring order's seed: from the round's context, so that a replay finds it again."""
    return int.from_bytes(hashlib.sha256(plan.setup.context + b"graph").digest()[:8], "little")


class SecureRound:
    """The server's side of one secure round, with the raw messages it accepted."""

    def __init__(self, plan: RoundPlan, number: int):
        self.plan = plan
        self.number = number
        self.protocol = SecAggServer(plan.setup, None, plan.graph.degree, graph_seed(plan))
        self.stage = "advertise"
        self.opened_at: float | None = None  # when the open stage (after advertise) began
        self.received: dict[str, dict[str, bytes]] = {s: {} for s in STAGES}

    @classmethod
    def replay(
        cls,
        plan: RoundPlan,
        number: int,
        stages: Iterable[tuple[str, float]],
        messages: Iterable[tuple[str, str, bytes]],
    ) -> SecureRound:
        """The round as it stood: ``stages`` are the recorded openings after advertise,
        ``messages`` the accepted ``(stage, device, body)`` in order."""
        secure = cls(plan, number)
        by_stage: dict[str, list[tuple[str, bytes]]] = {s: [] for s in STAGES}
        for stage, device, body in messages:
            by_stage[stage].append((device, body))
        opened = dict(stages)
        for stage in STAGES:
            for device, body in by_stage[stage]:
                secure.accept(stage, device, body)
            following = STAGES[STAGES.index(stage) + 1] if stage != "unmask" else None
            if following is None or following not in opened:
                break
            secure.close_stage(opened[following])
        return secure

    # --- messages -----------------------------------------------------------------------

    def check_stage(self, round: int, stage: str) -> None:
        if round != self.number:
            raise StaleUpdate(f"round {round} is not the open secure round ({self.number})")
        if stage not in STAGES:
            raise StaleUpdate(f"unknown secure-aggregation stage {stage!r}")
        if stage != self.stage:
            raise StaleUpdate(f"round {round} is at stage {self.stage!r}, not {stage!r}")

    def duplicate(self, stage: str, device: str, body: bytes) -> bool:
        """Whether ``body`` repeats what ``device`` already posted at ``stage`` (a retry);
        a different second message is refused."""
        known = self.received[stage].get(device)
        if known is None:
            return False
        if known == body:
            return True
        raise StaleUpdate(
            f"device {device} already answered stage {stage!r} of round {self.number}"
        )

    def accept(self, stage: str, device: str, body: bytes) -> None:
        """Validate ``body`` and record it in the protocol (raises ``ValueError`` for a
        malformed message, :class:`SecAggRefused` for one that breaks the protocol)."""
        p = self.protocol
        limit = max(1, self.plan.graph.degree)
        if stage == "advertise":
            data = decode_json(body, "the advertised keys")
            p.receive_keys(device, keys_from_json(data.get("keys")))
        elif stage == "share":
            data = decode_json(body, "the sealed shares")
            p.receive_shares(device, sealed_from_json(data.get("shares"), "sealed shares", limit))
        elif stage == "masked":
            p.receive_masked(device, decode_masked(body, self.plan.setup))
        elif stage == "confirm":
            data = decode_json(body, "the confirmations")
            sealed = sealed_from_json(data.get("confirmations"), "confirmations", limit)
            p.receive_confirmations(device, sealed)
        else:
            b_shares, key_shares = shares_from_json(decode_json(body, "the shares"), limit)
            p.receive_unmask(device, b_shares, key_shares)
        self.received[stage][device] = body

    # --- stages -------------------------------------------------------------------------

    def waiting_for(self) -> set[str]:
        """The devices the open stage still waits for."""
        p = self.protocol
        expected = {
            "advertise": set(),
            "share": p.members,
            "masked": p.sharers,
            "confirm": set(p.view.survivors) if p.view is not None else set(),
            "unmask": p.confirmed,
        }[self.stage]
        return expected - set(self.received[self.stage])

    def close_stage(self, now: float) -> None:
        """End the open stage with whoever answered and open the next (raises
        :class:`~fedge.privacy.secagg.protocol.SecAggAborted` when too few did)."""
        p = self.protocol
        closing = {
            "advertise": p.close_advertise,
            "share": p.close_share,
            "masked": p.close_masked,
            "confirm": p.close_confirm,
        }
        if self.stage == "unmask":
            raise SecAggRefused("the unmask stage ends with finish()")
        closing[self.stage]()
        self.stage = STAGES[STAGES.index(self.stage) + 1]
        self.opened_at = now

    def summary(self) -> dict[str, Any]:
        p = self.protocol
        view = p.view
        summary: dict[str, Any] = {
            "degree": self.plan.graph.degree,
            "threshold": self.plan.graph.threshold,
            "advertised": len(p.members),
            "summed": len(view.survivors) if view is not None else 0,
            "dropped": len(p.members) - (len(view.survivors) if view is not None else 0),
        }
        if isinstance(self.plan.codec, SkellamCodec) and view is not None:
            summary.update(self.plan.codec.noise_report(len(view.survivors)))
        return summary

    def input_for(self, device: str) -> dict[str, Any]:
        """What ``device`` needs for the open stage, or that it waits or is out."""
        p = self.protocol
        answer: dict[str, Any] = {"round": self.number, "stage": self.stage}
        if device in self.received[self.stage] or self.stage == "advertise":
            answer["waiting"] = True
        elif self.stage == "share" and device in p.members:
            answer["neighbours"] = neighbours_to_json(p.neighbours_of(device))
        elif self.stage == "masked" and device in p.sharers:
            answer["shares"] = sealed_to_json(p.shares_for(device))
        elif self.stage == "confirm" and p.view is not None and device in p.view.survivors:
            answer.update(view_to_json(p.view))
        elif self.stage == "unmask" and device in p.confirmed:
            answer["confirmations"] = sealed_to_json(p.confirmations_for(device))
        else:
            answer["excluded"] = True
        return answer
