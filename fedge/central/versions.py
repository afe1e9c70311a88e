"""Numbered, immutable versions in an object store (dataset versions, model versions).

A version is a JSON manifest at ``<prefix><n>.json``. A new version takes the next number
with a create-if-absent write (:meth:`ObjectStore.put_if_absent`), retried when a
concurrent writer took that number first, so two writers never share a number and a
reader never sees a half-written manifest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from fedge.central.storage.base import ObjectStore

__all__ = ["MAX_ATTEMPTS", "create_next_version", "version_numbers"]

#: Attempts at taking the next number before giving up under heavy contention.
MAX_ATTEMPTS = 1000

M = TypeVar("M", bound=BaseModel)


_NUMBER = re.compile(r"[0-9]{1,12}")


def parse_version(text: str) -> int | None:
    """``text`` as a version number if it is 1-12 ASCII digits, else ``None``.

    Not :meth:`str.isdigit`, which accepts "²" (that :func:`int` then refuses) and "١"
    (that :func:`int` reads as 1), nor :func:`int` alone, which takes "+1", " 1" and
    "1_0" and fails on 5,000 digits."""
    return int(text) if _NUMBER.fullmatch(text) else None


def version_numbers(store: ObjectStore, prefix: str) -> list[int]:
    """Numbers of the manifests under ``prefix``, ascending."""
    numbers = []
    for key in store.list(prefix):
        number = parse_version(key[len(prefix) :].removesuffix(".json"))
        if number is not None and key.endswith(".json"):
            numbers.append(number)
    return sorted(numbers)


def create_next_version(store: ObjectStore, prefix: str, make: Callable[[int], M]) -> M | None:
    """Write ``make(n)`` as version ``n``, the next free number; ``None`` when every
    attempt lost its race (the caller raises its own error)."""
    for _ in range(MAX_ATTEMPTS):
        manifest = make((version_numbers(store, prefix) or [0])[-1] + 1)
        key = f"{prefix}{manifest.version}.json"  # type: ignore[attr-defined]
        if store.put_if_absent(key, manifest.model_dump_json(indent=2).encode()):
            return manifest
    return None
