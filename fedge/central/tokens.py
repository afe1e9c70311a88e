"""API tokens for the inference server's write endpoints, kept hashed in the object store.

Anyone who can reach ``fedge serve`` could otherwise append samples to a training dataset
(data poisoning). A write needs a bearer token, made with ``fedge tokens create``::

    auth/tokens/<id>.json    {"id", "sha256", "scope", "access", "note", "created_at",
                              "revoked_at"}: rewritten only to revoke

A token reads ``fedge_<id>_<secret>``: the 12-hex-digit ``id`` finds its record, and the
record holds only the SHA-256 of the 256-bit random ``secret``, compared in constant time.
A plain hash suffices (no salt or key stretching) because the secret is random, not a
password: guessing it is 2^256 work whatever the hash costs. The token itself is shown
once, at creation; the store never holds it.

``scope`` names what a token may touch: models (``model:digits``, matching the model of
the request) or datasets (``dataset:digits``, matching the dataset the samples go to), or
``*`` for everything. ``access`` is ``write`` (also reads) or ``read``. Revoking writes
``revoked_at``; the server reads the record on every write, so a revocation takes effect
at the next request, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fedge.central.storage.base import ObjectStore
from fedge.errors import ObjectNotFound, RegistryError, StorageError

__all__ = ["ApiToken", "TokenStore", "check_scope"]

_PREFIX = "auth/tokens/"
_TOKEN = re.compile(r"fedge_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_SCOPE = re.compile(rf"\*|(?:model|dataset):{_NAME}")

Access = Literal["read", "write"]


def check_scope(scope: str) -> str:
    """``scope`` if it is ``*``, ``model:NAME`` or ``dataset:NAME``, else a RegistryError."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise RegistryError(f"invalid token scope {scope!r}: use model:NAME, dataset:NAME or '*'")
    return scope


class ApiToken(BaseModel):
    """The stored record of a token (its secret's hash, never the secret)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    sha256: str
    scope: list[str]
    access: Access
    note: str = ""
    created_at: datetime
    revoked_at: datetime | None = None

    def allows(self, access: Access, *, model: str | None, dataset: str | None) -> bool:
        """Whether this token may do ``access`` on ``model`` (and its ``dataset``)."""
        if self.revoked_at is not None or (access == "write" and self.access != "write"):
            return False
        wanted = {"*"}
        if model is not None:
            wanted.add(f"model:{model}")
        if dataset is not None:
            wanted.add(f"dataset:{dataset}")
        return bool(wanted & set(self.scope))


class TokenStore:
    """The API tokens of a store (the one holding the registry and the datasets)."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def create(self, scope: list[str], *, access: Access = "write", note: str = "") -> str:
        """A new token for ``scope``; returns the token, which only this call ever sees."""
        if not scope:
            raise RegistryError("a token needs a scope: model:NAME, dataset:NAME or '*'")
        if access not in ("read", "write"):
            raise RegistryError(f"token access is 'read' or 'write', got {access!r}")
        scope = sorted({check_scope(s) for s in scope})
        for _ in range(8):
            token_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            record = ApiToken(
                id=token_id,
                sha256=hashlib.sha256(secret.encode()).hexdigest(),
                scope=scope,
                access=access,
                note=note,
                created_at=datetime.now(UTC),
            )
            if self.store.put_if_absent(_PREFIX + f"{token_id}.json", _dump(record)):
                return f"fedge_{token_id}_{secret}"
        raise StorageError("could not allocate a token id")  # 2^48 ids: never in practice

    def list(self) -> list[ApiToken]:
        """Every token record, revoked ones included, oldest first."""
        records = [self._read(key[len(_PREFIX) : -5]) for key in self.store.list(_PREFIX)]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    def revoke(self, token_id: str) -> ApiToken:
        """Mark token ``token_id`` revoked (idempotent); returns its record."""
        record = self._read(token_id) if re.fullmatch("[0-9a-f]{12}", token_id) else None
        if record is None:
            raise RegistryError(f"no token with id {token_id!r} in {self.store.url}")
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": datetime.now(UTC)})
            self.store.put_bytes(_PREFIX + f"{token_id}.json", _dump(record))
        return record

    def verify(self, token: str) -> ApiToken | None:
        """The record of ``token`` if its secret is right and it is not revoked."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        record = self._read(match[1])
        if record is None or record.revoked_at is not None:
            return None
        digest = hashlib.sha256(match[2].encode()).hexdigest()
        return record if hmac.compare_digest(digest, record.sha256) else None

    def _read(self, token_id: str) -> ApiToken | None:
        try:
            return ApiToken.model_validate_json(self.store.get_bytes(_PREFIX + f"{token_id}.json"))
        except ObjectNotFound:
            return None
        except ValidationError:
            raise StorageError(f"token record {token_id} in {self.store.url} is corrupt") from None


def _dump(record: ApiToken) -> bytes:
    return record.model_dump_json(indent=2).encode()
