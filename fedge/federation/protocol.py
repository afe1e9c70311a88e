"""The JSON messages of the federation protocol (see ``docs/protocol.md``).

Python clients, browser clients and the server share these shapes; the server's OpenAPI
document (``/openapi.json``) is generated from them.

Messages refuse fields they do not know, so a device never ignores something the server
asks of it (such as adding noise). The optional parts of a task that later versions added
(secure aggregation, local DP) are therefore left out of the JSON when unused: a device of
an earlier version still takes ordinary rounds, and refuses, saying why, only the rounds
that need what it cannot do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PROTOCOL",
    "Enrollment",
    "EnrollmentRequest",
    "ErrorBody",
    "Finished",
    "LocalDPSettings",
    "Task",
    "TrainingSettings",
    "UploadReceipt",
    "Wait",
]

PROTOCOL = "fedge.federation.v1"

#: Device ids and idempotency keys: short ASCII names (no path or header tricks).
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollmentRequest(_Message):
    """``POST /v1/devices``: join the federation."""

    secret: str = Field(max_length=256, description="The federation's enrollment secret.")
    kind: Literal["python", "browser"] = Field(
        "python", description="What the device runs (shown on the dashboard)."
    )


class Enrollment(_Message):
    """The new device's id and bearer token (shown once; the server keeps its hash)."""

    device_id: str
    token: str


class TrainingSettings(_Message):
    """Local SGD of the round (semantics in :mod:`fedge.fl.local`)."""

    epochs: int
    batch_size: int | None
    lr: float
    momentum: float
    weight_decay: float
    drop_last: bool


class LocalDPSettings(_Message):
    """Local differential privacy: what a device does to its update before uploading it."""

    clip_norm: float = Field(gt=0, description="C: the L2 norm the delta is clipped to.")
    noise_multiplier: float = Field(
        gt=0, description="z: Gaussian noise of standard deviation z·C is added per value."
    )


class Task(_Message):
    """A check-in answered with work: train ``model_version`` for ``round``.

    ``training_round`` (= ``model_version + 1``) is the round the strategy and the
    device's random stream see; ``round`` counts every round the server opened,
    abandoned ones included, and is what the upload names.
    """

    status: Literal["train"] = "train"
    protocol: str = PROTOCOL
    round: int
    model_version: int
    training_round: int
    model_url: str
    upload_url: str
    deadline_seconds: float | None = Field(
        description="Seconds left to upload (null: no deadline)."
    )
    seed: int
    num_devices: int
    training: TrainingSettings
    strategy: dict[str, Any] = Field(description="The experiment's [strategy] section.")
    spec: dict[str, Any] = Field(description="The model spec (fedge.models.spec).")
    secure_aggregation: dict[str, Any] | None = Field(
        None,
        description=(
            "Set when the round runs SecAgg+: the round's plan (context, threshold, degree, "
            "modulus bits, vector layout, weighting, clipping). The device then posts its "
            "keys to secagg_url/advertise instead of uploading its update."
        ),
    )
    secagg_url: str | None = None
    local_dp: LocalDPSettings | None = Field(
        None,
        description=(
            'Set with privacy.dp = "local": the device clips its delta to clip_norm and adds '
            "N(0, (noise_multiplier·clip_norm)²) noise from its own entropy before uploading."
        ),
    )

    def to_wire(self) -> dict[str, Any]:
        """The task as JSON, without the extensions it does not use (see the module)."""
        data = self.model_dump(mode="json")
        for name in _EXTENSIONS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


#: Optional task fields added after the first protocol version (left out when unused).
_EXTENSIONS = ("secure_aggregation", "secagg_url", "local_dp")


class Wait(_Message):
    """A check-in answered with "come back later" (pace steering)."""

    status: Literal["wait"] = "wait"
    retry_after: float = Field(description="Seconds to wait before the next check-in.")
    round: int | None = None
    reason: str


class Finished(_Message):
    """The experiment has trained all its rounds; nothing more to do."""

    status: Literal["finished"] = "finished"
    model_version: int


class UploadReceipt(_Message):
    """An update was stored durably (201), or had been already (200, ``duplicate``)."""

    accepted: Literal[True] = True
    duplicate: bool
    round: int
    device_id: str


class ErrorBody(_Message):
    """Every 4xx answer: what was wrong, in one sentence."""

    error: str
