"""The cryptographic building blocks of SecAgg+, all from ``cryptography``.

* Key agreement: X25519, the shared secret expanded by HKDF-SHA256 with the round's
  context as salt and a purpose label as info, so that a key agreed for one round, or for
  one purpose, is useless for any other.
* Authenticated encryption: AES-256-GCM with a random 96-bit nonce; the associated data
  binds the round context, the stage, the sender and the receiver, so that a ciphertext
  replayed from another round, redirected to another client or presented at another stage
  fails authentication.
* Masks: the AES-256-CTR keystream of a 256-bit seed (the seed is the key, the initial
  counter block is zero and the whole 128-bit block counts), read as little-endian
  unsigned integers. Never a general-purpose RNG: a mask must be unpredictable without its
  seed. AES-CTR rather than ChaCha20 because every party has it in hardware-backed form:
  ``cryptography`` here, WebCrypto in the browser client, which has no ChaCha20.
* Shamir secret sharing over the prime field GF(2^255 − 19): secrets are drawn below the
  prime, so a 32-byte X25519 private key or mask seed is one field element.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedge.errors import ProtocolError

__all__ = [
    "FIELD_PRIME",
    "KeyPair",
    "SecAggRefused",
    "associated_data",
    "derive_key",
    "mask_stream",
    "open_sealed",
    "random_secret",
    "seal",
    "shamir_combine",
    "shamir_split",
]

#: The Shamir field: 2^255 − 19, prime; every secret is an integer below it.
FIELD_PRIME = 2**255 - 19
SECRET_BYTES = 32
NONCE_BYTES = 12


class SecAggRefused(ProtocolError):
    """A secure-aggregation message was refused: it fails authentication, comes from a
    client that is not a neighbour, contradicts what the client already knows, or arrives
    at the wrong stage. The refusing side takes no further part in the round."""

    status = 409


def random_secret() -> int:
    """A uniform field element from the operating system's CSPRNG."""
    while True:  # rejection sampling keeps it uniform below the prime
        value = int.from_bytes(os.urandom(SECRET_BYTES), "little") & ((1 << 255) - 1)
        if value < FIELD_PRIME:
            return value


def secret_bytes(value: int) -> bytes:
    return value.to_bytes(SECRET_BYTES, "little")


class KeyPair:
    """An X25519 key pair whose private key is a field element (so it can be shared)."""

    def __init__(self, secret: int | None = None):
        self.secret = random_secret() if secret is None else secret
        self._private = X25519PrivateKey.from_private_bytes(secret_bytes(self.secret))
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def agree(self, peer_public: bytes) -> bytes:
        """The raw X25519 shared secret with ``peer_public`` (32 bytes)."""
        try:
            peer = X25519PublicKey.from_public_bytes(peer_public)
            return self._private.exchange(peer)
        except ValueError as exc:  # wrong length, or an all-zero (low-order) result
            raise SecAggRefused(f"invalid X25519 public key: {exc}") from None


def derive_key(shared: bytes, context: bytes, purpose: bytes) -> bytes:
    """A 256-bit key for ``purpose`` in the round ``context`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=context, info=purpose).derive(shared)


def _field(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<I", len(raw)) + raw


def associated_data(context: bytes, stage: str, sender: str, receiver: str) -> bytes:
    """The AEAD associated data: length-prefixed round context, stage, sender, receiver."""
    return b"".join(_field(part) for part in (context, stage, sender, receiver))


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AES-256-GCM: a fresh random nonce followed by the ciphertext and its tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, sealed: bytes, ad: bytes, what: str) -> bytes:
    """Decrypt :func:`seal`'s output; a tampered, replayed or misdirected message is
    refused with :class:`SecAggRefused` naming ``what``."""
    if len(sealed) < NONCE_BYTES + 16:
        raise SecAggRefused(f"{what}: ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise SecAggRefused(
            f"{what}: authentication failed (tampered, replayed from another round or stage, "
            "or not meant for this client)"
        ) from None


def mask_stream(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """``length`` unsigned integers of ``dtype`` from the AES-256-CTR keystream of ``seed``
    (zero initial counter block)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    nbytes = length * dtype.itemsize
    encryptor = Cipher(algorithms.AES256(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(nbytes))
    return np.frombuffer(stream, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def shamir_split(secret: int, xs: Sequence[int], threshold: int) -> list[int]:
    """Shares of ``secret`` at the points ``xs`` (distinct, nonzero): any ``threshold`` of
    them determine it, fewer reveal nothing."""
    if not 0 <= secret < FIELD_PRIME:
        raise ValueError("the secret must be a field element")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} needs between 1 and {len(xs)} shares")
    coefficients = [secret] + [random_secret() for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        acc = 0
        for c in reversed(coefficients):  # Horner
            acc = (acc * x + c) % FIELD_PRIME
        shares.append(acc)
    return shares


def shamir_combine(points: Sequence[tuple[int, int]]) -> int:
    """The secret (the polynomial at 0) from ``(x, share)`` points by Lagrange
    interpolation; give exactly the threshold number of points or more."""
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ValueError("Shamir points must have distinct x")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % FIELD_PRIME
                den = den * (xj - xi) % FIELD_PRIME
        secret = (secret + yi * num * pow(den, -1, FIELD_PRIME)) % FIELD_PRIME
    return secret


def digest(*parts: bytes | str) -> bytes:
    """SHA-256 of length-prefixed parts."""
    return hashlib.sha256(b"".join(_field(p) for p in parts)).digest()
