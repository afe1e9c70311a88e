"""An object store in an S3 bucket (AWS, or any S3-compatible server such as MinIO).

S3 writes are atomic by nature: an object becomes visible whole when its upload completes.
Create-if-absent is S3's conditional write, ``PutObject`` with ``If-None-Match: *``: the
server refuses (412) when the key exists, and of several concurrent writers exactly one
succeeds (AWS S3 since 2024, MinIO, and other servers that implement conditional writes).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fedge.central.storage.base import ObjectStore, check_key, check_prefix
from fedge.errors import ObjectNotFound, StorageError

__all__ = ["S3Store"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# AWS answers 409 while another conditional write to the same key is in flight; retrying
# then yields 412 (the other writer won) or success (it failed).
_CONFLICT_RETRIES = 5


# One boto3 session for all stores: building one reloads the service models (~0.2 s), and
# sessions are not thread-safe while they build clients, hence the lock.
_SESSION: boto3.session.Session | None = None
_SESSION_LOCK = threading.Lock()


def _client(endpoint_url: str | None, region: str | None) -> Any:
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(ObjectStore):
    """An object store under ``prefix`` in the S3 bucket ``bucket``.

    Parameters
    ----------
    bucket:
        The bucket; it must exist.
    prefix:
        Key prefix inside the bucket (default ``""``: the whole bucket), so several stores
        can share one bucket.
    endpoint_url:
        Address of an S3-compatible server, e.g. ``http://127.0.0.1:9000``; ``None``
        (default) uses AWS.
    region:
        Region name; default from the AWS configuration (``AWS_REGION``,
        ``~/.aws/config``), else ``us-east-1``.
    client:
        A ready boto3 S3 client to use instead of building one (then ``endpoint_url`` and
        ``region`` are ignored).

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles), looked up once per process as
    with boto3's default session.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        region: str | None = None,
        client: Any | None = None,
    ):
        if not bucket or "/" in bucket:
            raise StorageError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        if client is None:
            try:
                client = _client(endpoint_url, region)
            except (BotoCoreError, ValueError) as exc:
                raise StorageError(f"cannot set up an S3 client for {self.url}: {exc}") from None
        self.client = client

    @property
    def url(self) -> str:
        url = f"s3://{self.bucket}/{self.prefix}"
        return f"{url} at {self.endpoint_url}" if self.endpoint_url else url

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, exc: Exception, action: str, key: str) -> StorageError:
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code in _NOT_FOUND:
                return ObjectNotFound(f"no object '{key}' in {self.url}")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist ({self.url})")
            if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                return StorageError(f"cannot {action} '{key}' in {self.url}: access denied")
            message = exc.response.get("Error", {}).get("Message", "")
            return StorageError(f"cannot {action} '{key}' in {self.url}: {code} {message}")
        return StorageError(f"cannot {action} '{key}' in {self.url}: {exc}")

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "write", key) from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        full = self._key(key)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = _code(exc)
                if code in {"PreconditionFailed", "412"}:
                    return False
                if code not in {"ConditionalRequestConflict", "409"}:
                    raise self._fail(exc, "write", key) from None
                time.sleep(0.05 * 2**attempt)
            except BotoCoreError as exc:
                raise self._fail(exc, "write", key) from None
        raise StorageError(f"cannot write '{key}' in {self.url}: conflicting writers kept racing")

    def put_file(self, key: str, path: Path) -> None:
        if not Path(path).is_file():
            raise StorageError(f"cannot read {path}: no such file")
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "write", key) from None
        except S3UploadFailedError as exc:
            # boto3 wraps the client error; report the original, which names the cause.
            cause = exc.__context__ if isinstance(exc.__context__, ClientError) else exc
            raise self._fail(cause, "write", key) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key) from None

    def get_file(self, key: str, path: Path) -> Path:
        dest = Path(path)
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            dest.parent.mkdir(parents=True, exist_ok=True)
            # s3transfer downloads into a temporary file and renames it into place.
            self.client.download_file(self.bucket, self._key(key), str(dest))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key) from None
        except OSError as exc:
            raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None
        return dest

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._fail(exc, "check", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "check", key) from None
        return True

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise self._fail(exc, "check", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "check", key) from None
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                keys += [obj["Key"][len(self.prefix) :] for obj in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "list", prefix) from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "delete", key) from None
