"""SecAgg+ messages on the wire: what a device posts at each stage, and what the server
answers when the device asks for its next stage's input.

Keys, ciphertexts and shares travel as base64 in JSON; a masked vector travels as its raw
little-endian integers. Every parser refuses malformed input with
:class:`~fedge.privacy.secagg.crypto.SecAggRefused` (answered 409 by the server) or
:class:`ValueError` (answered 400), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedge.privacy.secagg.crypto import FIELD_PRIME, SecAggRefused
from fedge.privacy.secagg.protocol import Neighbour, PublicKeys, RoundSetup, View

__all__ = [
    "MAX_ID_LENGTH",
    "decode_json",
    "decode_masked",
    "from_b64",
    "keys_from_json",
    "keys_to_json",
    "neighbours_from_json",
    "neighbours_to_json",
    "sealed_from_json",
    "sealed_to_json",
    "shares_from_json",
    "shares_to_json",
    "to_b64",
    "view_from_json",
    "view_to_json",
]

MAX_ID_LENGTH = 64
_MAX_SEALED = 256  # bytes of one sealed share or confirmation


def to_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def from_b64(text: Any, what: str, limit: int = _MAX_SEALED) -> bytes:
    if not isinstance(text, str) or len(text) > 2 * limit:
        raise ValueError(f"{what} must be a base64 string of at most {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def decode_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object")
    return data


def _ids(mapping: Any, what: str, limit: int) -> dict[str, Any]:
    if not isinstance(mapping, dict) or len(mapping) > limit:
        raise ValueError(f"{what} must be an object with at most {limit} entries")
    for key in mapping:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_ID_LENGTH:
            raise ValueError(f"{what}: device ids are strings of 1 to {MAX_ID_LENGTH} characters")
    return mapping


def keys_to_json(keys: PublicKeys) -> dict[str, str]:
    return {"channel": to_b64(keys.channel), "mask": to_b64(keys.mask)}


def keys_from_json(data: Any) -> PublicKeys:
    if not isinstance(data, dict):
        raise ValueError("public keys must be a JSON object")
    return PublicKeys(
        channel=from_b64(data.get("channel"), "channel key", 32),
        mask=from_b64(data.get("mask"), "mask key", 32),
    )


def neighbours_to_json(neighbours: Mapping[str, Neighbour]) -> dict[str, Any]:
    return {o: {**keys_to_json(n.keys), "x": n.x} for o, n in neighbours.items()}


def neighbours_from_json(data: Any, limit: int) -> dict[str, Neighbour]:
    out = {}
    for other, entry in _ids(data, "neighbours", limit).items():
        x = entry.get("x") if isinstance(entry, dict) else None
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < FIELD_PRIME:
            raise ValueError(f"neighbour {other}: x must be a positive integer")
        out[other] = Neighbour(keys_from_json(entry), x)
    return out


def sealed_to_json(sealed: Mapping[str, bytes]) -> dict[str, str]:
    return {o: to_b64(c) for o, c in sealed.items()}


def sealed_from_json(data: Any, what: str, limit: int) -> dict[str, bytes]:
    return {o: from_b64(c, f"{what} for {o}") for o, c in _ids(data, what, limit).items()}


def shares_to_json(b_shares: Mapping[str, int], key_shares: Mapping[str, int]) -> dict[str, Any]:
    return {
        "self_mask": {o: format(s, "x") for o, s in b_shares.items()},
        "mask_key": {o: format(s, "x") for o, s in key_shares.items()},
    }


def shares_from_json(data: Mapping[str, Any], limit: int) -> tuple[dict[str, int], dict[str, int]]:
    out: list[dict[str, int]] = []
    for name in ("self_mask", "mask_key"):
        parsed = {}
        for owner, text in _ids(data.get(name, {}), name, limit).items():
            try:
                value = int(text, 16) if isinstance(text, str) and len(text) <= 64 else -1
            except ValueError:
                value = -1
            if not 0 <= value < FIELD_PRIME:
                raise ValueError(f"{name} share of {owner} must be a field element in hex")
            parsed[owner] = value
        out.append(parsed)
    return out[0], out[1]


def view_to_json(view: View) -> dict[str, list[str]]:
    return {"survivors": list(view.survivors), "dropped": list(view.dropped)}


def view_from_json(data: Mapping[str, Any], limit: int) -> View:
    lists = []
    for name in ("survivors", "dropped"):
        value = data.get(name)
        if not isinstance(value, list) or len(value) > limit:
            raise ValueError(f"{name} must be a list of at most {limit} device ids")
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_ID_LENGTH for v in value):
            raise ValueError(f"{name}: device ids are strings of 1 to {MAX_ID_LENGTH} characters")
        lists.append(tuple(value))
    return View(lists[0], lists[1])


def decode_masked(body: bytes, setup: RoundSetup) -> np.ndarray:
    """A masked vector from its raw little-endian integers."""
    dtype = setup.dtype.newbyteorder("<")
    if len(body) != setup.length * dtype.itemsize:
        raise SecAggRefused(
            f"a masked input must be {setup.length} {setup.dtype} values "
            f"({setup.length * dtype.itemsize} bytes), got {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).astype(setup.dtype)
