"""The object-store interface every backend implements, and the key rules they share.

A store maps keys to immutable byte strings, like S3. Keys are ``/``-separated relative
paths (``models/lenet/versions/1.json``); every backend accepts and refuses the same keys,
so code written against a local folder runs unchanged against a bucket.

Content-addressed blobs live under ``blobs/sha256/<hex digest>``: putting the same bytes
twice stores them once, and a reader can check what it got against the name.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

from fedge.errors import StorageError

__all__ = ["BLOB_PREFIX", "ObjectStore", "blob_key", "check_key", "check_prefix", "file_sha256"]

BLOB_PREFIX = "blobs/sha256/"
MAX_KEY_BYTES = 1024
_CHUNK = 1 << 20


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`StorageError`.

    A key is a non-empty ``/``-separated path of at most 1,024 UTF-8 bytes whose segments
    are non-empty, do not start with ``.`` (which rules out ``.`` and ``..``, and keeps the
    local backend's temporary files out of the key space) and contain no backslash or
    control character.
    """
    if not isinstance(key, str) or not key:
        raise StorageError(f"invalid object key {key!r}: empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise StorageError(f"invalid object key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key or any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise StorageError(f"invalid object key {key!r}: backslash or control character")
    for segment in key.split("/"):
        if not segment:
            raise StorageError(f"invalid object key {key!r}: empty path segment")
        if segment.startswith("."):
            raise StorageError(f"invalid object key {key!r}: a segment starts with '.'")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix: empty, or a key with an optional
    trailing ``/``."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def blob_key(digest: str) -> str:
    """Key of the blob whose SHA-256 hex digest is ``digest``."""
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise StorageError(f"not a SHA-256 hex digest: {digest!r}")
    return BLOB_PREFIX + digest


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


class ObjectStore(ABC):
    """Bytes under keys, with atomic writes and a create-if-absent primitive.

    Every write is atomic: a reader sees the old object or the whole new one, never a
    partial file. Errors are :class:`StorageError`; a missing key on read is
    :class:`~fedge.errors.ObjectNotFound`.
    """

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store lives, as :func:`~fedge.central.storage.open_store` accepts it."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if no object is there.

        Returns ``True`` if this call created the object and ``False`` if one already
        existed (which is left untouched). Of several concurrent callers for one key,
        exactly one gets ``True``: this is what version numbers are allocated with.
        """

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object under ``key``."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the contents of the local file ``path`` under ``key`` (streamed)."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> Path:
        """Write the object under ``key`` to the local file ``path`` (atomically)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Bytes stored under ``key``, or ``None`` if nothing is (one metadata request)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of all objects whose key starts with ``prefix``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing key is not an error."""

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` by content and return its SHA-256 hex digest (idempotent)."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.exists(blob_key(digest)):
            self.put_bytes(blob_key(digest), data)
        return digest

    def put_blob_file(self, path: Path) -> str:
        """Store a local file by content and return its SHA-256 hex digest (idempotent)."""
        digest = file_sha256(path)
        if not self.exists(blob_key(digest)):
            self.put_file(blob_key(digest), path)
        return digest

    def get_blob(self, digest: str) -> bytes:
        """The blob named ``digest``, checked against its name."""
        data = self.get_bytes(blob_key(digest))
        if hashlib.sha256(data).hexdigest() != digest:
            raise StorageError(f"blob {digest} in {self.url} is corrupt: its hash differs")
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
