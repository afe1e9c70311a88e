"""Object storage: one small interface, a local folder by default and S3 for deployments.

Example::

    store = open_store("./fedge-store")      # or "s3://bucket/prefix"
    digest = store.put_blob(b"weights")      # content-addressed, idempotent
    assert store.get_blob(digest) == b"weights"
"""

from fedge.central.storage.base import BLOB_PREFIX, ObjectStore, blob_key, check_key
from fedge.central.storage.local import LocalStore
from fedge.central.storage.s3 import S3Store
from fedge.central.storage.url import (
    DEFAULT_STORE,
    ENDPOINT_ENV,
    STORE_ENV,
    default_store_url,
    open_store,
)

__all__ = [
    "BLOB_PREFIX",
    "DEFAULT_STORE",
    "ENDPOINT_ENV",
    "STORE_ENV",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "blob_key",
    "check_key",
    "default_store_url",
    "open_store",
]
