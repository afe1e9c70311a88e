"""Open a store from a URL: ``file:///path`` or a plain path, or ``s3://bucket/prefix``."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from fedge.central.storage.base import ObjectStore
from fedge.central.storage.local import LocalStore
from fedge.central.storage.s3 import S3Store
from fedge.errors import StorageError

__all__ = ["DEFAULT_STORE", "ENDPOINT_ENV", "STORE_ENV", "default_store_url", "open_store"]

STORE_ENV = "FEDGE_STORE"
ENDPOINT_ENV = "FEDGE_S3_ENDPOINT"
DEFAULT_STORE = "./fedge-store"


def default_store_url() -> str:
    """``$FEDGE_STORE`` if set, else ``./fedge-store``."""
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def open_store(url: str | Path, *, endpoint_url: str | None = None) -> ObjectStore:
    """The store that ``url`` names.

    Parameters
    ----------
    url:
        ``file:///abs/path`` or a plain path (absolute or relative to the working folder)
        for a :class:`LocalStore`; ``s3://bucket`` or ``s3://bucket/prefix`` for an
        :class:`S3Store`.
    endpoint_url:
        For ``s3://`` URLs, the S3-compatible server to talk to; default
        ``$FEDGE_S3_ENDPOINT``, else AWS.
    """
    text = str(url)
    if isinstance(url, Path) or "://" not in text:
        if not text:
            raise StorageError("empty store URL")
        return LocalStore(Path(text))
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URLs name a local path (file:///...), got {text!r}")
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"S3 URL without a bucket: {text!r} (use s3://bucket/prefix)")
        endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint)
    raise StorageError(f"unsupported store URL {text!r}: use a path, file:///path or s3://bucket")
