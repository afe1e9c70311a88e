"""Ed25519 signatures on model versions, so that a device can verify who published a model,
not only that it arrived intact.

File hashes and the ETag catch corruption and a careless proxy, but whoever can rewrite a
download can rewrite its hashes too. With a publisher key, the registry signs each new
version's statement, the canonical JSON of::

    {"fedge": "model-version/2", "name": ..., "version": n, "files": {file: sha256, ...},
     "task": {...} or null}

(sorted keys, no spaces), and stores the signature in the version's manifest and in the
download bundle's ``version.json``. An edge app configured with the publisher's public key
installs only versions whose signature verifies over the hashes of the files it got and
the task its ``version.json`` records: the task sets how outputs are decoded and what the
classes are called, so a rewritten task (a detector's category names swapped, its score
threshold lowered) is refused like a rewritten file. (``model-version/1`` statements, which
left the task out, no longer verify: register such versions again to sign them.) The
private key never leaves the machine that registers models; devices hold the public key.

Keys: ``fedge models keygen KEY`` writes a PEM private key (mode 0600) and prints the public
key as base64 of its 32 raw bytes. ``$FEDGE_SIGNING_KEY`` names the private key file for
every command that registers versions; ``$FEDGE_PUBLISHER_KEY`` (or ``--publisher-key``)
gives devices the public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from fedge.errors import ConfigError

__all__ = [
    "Signature",
    "create_key",
    "load_public_key",
    "load_signing_key",
    "public_key_text",
    "sign_version",
    "signing_key_from_env",
    "verify_version",
]


class Signature(BaseModel):
    """An Ed25519 signature of a version's statement, and which key made it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    ed25519: str


def _statement(
    name: str, version: int, files: Mapping[str, str], task: Mapping[str, Any] | None
) -> bytes:
    body = {
        "fedge": "model-version/2",
        "name": name,
        "version": version,
        "files": dict(files),
        "task": None if task is None else dict(task),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex digits of the SHA-256 of the raw public key: names the key, not secret."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The public key as devices are given it: base64 of its 32 raw bytes."""
    return base64.b64encode(_raw(public)).decode()


def create_key(path: Path) -> Ed25519PrivateKey:
    """A new private key, written to ``path`` as PEM with mode 0600 (never overwritten)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists: choose another file, a key is never overwritten"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def signing_key_from_env() -> Ed25519PrivateKey | None:
    """The key ``$FEDGE_SIGNING_KEY`` names, if it is set."""
    path = os.environ.get("FEDGE_SIGNING_KEY")
    return load_signing_key(path) if path else None


def load_public_key(text: str) -> Ed25519PublicKey:
    """A publisher key given as base64 of 32 raw bytes, or as the path of a file holding
    that text or a PEM public key."""
    candidate = text.strip()
    path = Path(candidate)
    if len(candidate) < 4096 and path.is_file():
        data = path.read_bytes()
        if b"BEGIN PUBLIC KEY" in data:
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as exc:
                raise ConfigError(f"{path} is not a PEM public key: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
            return key
        candidate = data.decode(errors="replace").strip()
    try:
        raw = base64.b64decode(candidate, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "a publisher key is base64 of 32 bytes (as `fedge models keygen` prints it) or a "
            f"file holding it, got {text[:60]!r}"
        ) from None


def sign_version(
    key: Ed25519PrivateKey,
    name: str,
    version: int,
    files: Mapping[str, str],
    task: Mapping[str, Any] | None = None,
) -> Signature:
    """The signature of version ``version`` of ``name`` with file hashes ``files`` and the
    ``task`` its manifest records."""
    signature = key.sign(_statement(name, version, files, task))
    return Signature(key_id=key_id(key.public_key()), ed25519=base64.b64encode(signature).decode())


def verify_version(
    public: Ed25519PublicKey,
    name: str,
    version: int,
    files: Mapping[str, str],
    signature: Any,
    task: Mapping[str, Any] | None = None,
) -> str | None:
    """What is wrong with ``signature`` for this version with ``task`` (``None``: it
    verifies)."""
    if signature is None:
        return "it is not signed, and a publisher key is required"
    try:
        parsed = Signature.model_validate(signature)
        raw = base64.b64decode(parsed.ed25519, validate=True)
    except (ValueError, binascii.Error):
        return "its signature is malformed"
    if parsed.key_id != key_id(public):
        return f"it is signed by key {parsed.key_id}, not the publisher's {key_id(public)}"
    try:
        public.verify(raw, _statement(name, version, files, task))
    except InvalidSignature:
        return "its signature does not match its files and task"
    return None
