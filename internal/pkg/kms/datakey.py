"""Data-key wrapping under the root key (docs/security.md item 4).

A wrapped key is ``0x01 | nonce(12) | AES-256-GCM(wrap key, material, AD)`` where the AD names the key's
id (a UUID), version and algorithm: a wrapped key copied into another row, or given another version or
algorithm, no longer unwraps. The key name is not in it (the format predates named keys); moving a row to
another name gains nothing, since every envelope's associated data names its key.
``key_hash`` = HMAC-SHA256(verification key, material) lets start-up prove that the configured root key
is the one that wrapped every stored key, with a message that names the likely cause.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from internal.pkg.kms.envelope import DATA_KEY_SIZE, NONCE_SIZE, Algorithm
from internal.pkg.kms.rootkey import RootKey

WRAP_FORMAT = 1
_WRAP_AD_DOMAIN = b"authkms/kms/wrapped-data-key/v1"
_SECRET_AD = b"authkms/kms/wrapped-service-secret/v1"


class KeyUnwrapError(Exception):
    """The wrapped key does not open under this root key, or its hash does not match."""


def _ad(key_id: str, version: int, algorithm: str) -> bytes:
    parts = [_WRAP_AD_DOMAIN]
    for item in (key_id.encode(), struct.pack(">I", version), algorithm.encode()):
        parts.append(struct.pack(">I", len(item)) + item)
    return b"".join(parts)


def new_material() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


class KeyWrapper:
    """Wraps, unwraps and fingerprints data keys with subkeys of the root key."""

    __slots__ = ("_aead", "_verify_key")

    def __init__(self, root: RootKey) -> None:
        self._aead = AESGCM(root.wrap_key())
        self._verify_key = root.verification_key()

    def __repr__(self) -> str:
        return "KeyWrapper(<hidden>)"

    def key_hash(self, material: bytes) -> str:
        return hmac.new(self._verify_key, material, hashlib.sha256).hexdigest()

    def wrap(self, key_id: str, version: int, algorithm: Algorithm, material: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return bytes([WRAP_FORMAT]) + nonce + self._aead.encrypt(nonce, material, _ad(key_id, version, algorithm))

    def unwrap(self, key_id: str, version: int, algorithm: str, wrapped: bytes | None, key_hash: str) -> bytes:
        """The key material, or KeyUnwrapError (wrong root key, edited row, or destroyed key)."""
        if wrapped is None or len(wrapped) < 1 + NONCE_SIZE + 16 or wrapped[0] != WRAP_FORMAT:
            raise KeyUnwrapError(f"data key version {version} has no readable wrapped material")
        try:
            material = self._aead.decrypt(
                wrapped[1 : 1 + NONCE_SIZE], wrapped[1 + NONCE_SIZE :], _ad(key_id, version, algorithm)
            )
        except (InvalidTag, ValueError):
            raise KeyUnwrapError(f"data key version {version} does not unwrap under this root key") from None
        if len(material) != DATA_KEY_SIZE or not hmac.compare_digest(self.key_hash(material), key_hash.strip()):
            raise KeyUnwrapError(f"data key version {version} fails its key_hash check")
        return material

    def wrap_secret(self, secret: bytes) -> bytes:
        """Wrap a long-term secret that is not a data key (the service secret), under its own associated data."""
        nonce = os.urandom(NONCE_SIZE)
        return bytes([WRAP_FORMAT]) + nonce + self._aead.encrypt(nonce, secret, _SECRET_AD)

    def unwrap_secret(self, wrapped: bytes) -> bytes:
        if len(wrapped) < 1 + NONCE_SIZE + 16 or wrapped[0] != WRAP_FORMAT:
            raise KeyUnwrapError("the stored service secret is not readable")
        try:
            return self._aead.decrypt(wrapped[1 : 1 + NONCE_SIZE], wrapped[1 + NONCE_SIZE :], _SECRET_AD)
        except (InvalidTag, ValueError):
            raise KeyUnwrapError("the stored service secret does not unwrap under this root key") from None
