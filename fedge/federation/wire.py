"""Tensors on the wire: models and updates as safetensors files.

Both directions use one format that any language can read and write (the browser client
does it in JavaScript): an 8-byte little-endian header length, a JSON header, the raw
little-endian tensor data. Tensors are named ``params/<parameter>`` for weights and
``extras/<group>/<name>`` for what a strategy sends beyond them (SCAFFOLD's control
variate ``c`` down, its ``delta_c`` up). The header's ``__metadata__`` (string values
only) says what the file is:

* a model: ``format = "fedge.model.v1"``, ``model_version``;
* an update: ``format = "fedge.update.v1"``, ``round``, ``model_version``,
  ``num_samples``, ``num_steps``, ``metrics`` (a JSON object of numbers).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedge.errors import UpdateRejected
from fedge.fl.types import ClientUpdate, Params

__all__ = [
    "MODEL_FORMAT",
    "UPDATE_FORMAT",
    "DecodedUpdate",
    "decode_model",
    "decode_update",
    "encode_model",
    "encode_update",
    "read_header",
]

MODEL_FORMAT = "fedge.model.v1"
UPDATE_FORMAT = "fedge.update.v1"
_MAX_HEADER = 16 << 20


def _pack(params: Mapping[str, torch.Tensor], extras: Mapping[str, Mapping[str, Any]]) -> Params:
    tensors = {f"params/{k}": v.detach().contiguous() for k, v in params.items()}
    for group, values in extras.items():
        for k, v in values.items():
            tensors[f"extras/{group}/{k}"] = v.detach().contiguous()
    return tensors


def _unpack(tensors: Mapping[str, torch.Tensor]) -> tuple[Params, dict[str, Params]]:
    params: Params = {}
    extras: dict[str, Params] = {}
    for name, value in tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "params" and rest:
            params[rest] = value
            continue
        group, _, key = rest.partition("/")
        if kind == "extras" and group and key:
            extras.setdefault(group, {})[key] = value
            continue
        raise UpdateRejected(f"tensor {name!r} is neither params/<name> nor extras/<group>/<name>")
    return params, extras


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked to fit inside ``data``."""
    if len(data) < 8:
        raise UpdateRejected(f"not a safetensors file: {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(len(data) - 8, _MAX_HEADER):
        raise UpdateRejected(f"safetensors header of {size} bytes does not fit the body")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UpdateRejected(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise UpdateRejected("safetensors header is not a JSON object")
    return header


def _tensors(data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types, and others
        raise UpdateRejected(f"malformed safetensors data: {exc}") from None


def _metadata(header: Mapping[str, Any], expected: str) -> dict[str, str]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != expected:
        raise UpdateRejected(f'safetensors metadata must have format = "{expected}"')
    return meta


def _int(meta: Mapping[str, str], key: str, *, low: int = 0, high: int = 2**62) -> int:
    text = meta.get(key)
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 19:
        raise UpdateRejected(f"metadata {key} must be a non-negative integer, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise UpdateRejected(f"metadata {key} must be in [{low}, {high}], got {value}")
    return value


def encode_model(
    params: Mapping[str, torch.Tensor],
    extras: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    model_version: int,
) -> bytes:
    """A global model (and the strategy's task extras) as a safetensors file."""
    meta = {"format": MODEL_FORMAT, "model_version": str(model_version)}
    return st_save(_pack(params, extras), metadata=meta)


def decode_model(data: bytes) -> tuple[int, Params, dict[str, Params]]:
    """``(model_version, params, extras)`` of a file from :func:`encode_model`."""
    meta = _metadata(read_header(data), MODEL_FORMAT)
    params, extras = _unpack(_tensors(data))
    return _int(meta, "model_version"), params, extras


def encode_update(update: ClientUpdate, *, round: int, model_version: int) -> bytes:
    """An update for ``round``, trained from ``model_version``, as a safetensors file."""
    meta = {
        "format": UPDATE_FORMAT,
        "round": str(round),
        "model_version": str(model_version),
        "num_samples": str(update.num_samples),
        "num_steps": str(update.num_steps),
        "metrics": json.dumps(dict(update.metrics)),
    }
    return st_save(_pack(update.params, update.extras), metadata=meta)


@dataclass(frozen=True)
class DecodedUpdate:
    """An uploaded update and the round and model version it names."""

    round: int
    model_version: int
    update: ClientUpdate


def decode_update(data: bytes, *, device: str) -> DecodedUpdate:
    """Parse an uploaded update; raises :class:`UpdateRejected` naming what is wrong.

    Only the format is checked here; whether the tensors fit the model is
    :meth:`fedge.fl.rounds.RoundCoordinator.check`'s job.
    """
    meta = _metadata(read_header(data), UPDATE_FORMAT)
    try:
        metrics = json.loads(meta.get("metrics", "{}"))
    except json.JSONDecodeError:
        raise UpdateRejected("metadata metrics is not JSON") from None
    if not isinstance(metrics, dict) or len(metrics) > 64:
        raise UpdateRejected("metadata metrics must be a JSON object of at most 64 numbers")
    params, extras = _unpack(_tensors(data))
    update = ClientUpdate(
        client=device,
        params=params,
        num_samples=_int(meta, "num_samples"),
        num_steps=_int(meta, "num_steps"),
        metrics=metrics,
        extras=extras,
    )
    return DecodedUpdate(
        round=_int(meta, "round", low=1),
        model_version=_int(meta, "model_version"),
        update=update,
    )
