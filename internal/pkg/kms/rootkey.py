"""The root key: PBKDF2-HMAC-SHA256 over the configured seed and salt (docs/security.md item 3).

The root key never leaves this process and is never stored. It only derives purpose-bound subkeys
(HKDF-SHA256, one ``info`` label per purpose): the key that wraps data keys, the key behind the
``key_hash`` column, and one blind-index key per named key and field. Nothing here logs or prints key bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from internal.biz.errors import InvalidArgument

MIN_ITERATIONS = 10_000
MIN_SEED_CHARS = 16
MIN_SALT_BYTES = 8
KEY_LENGTHS = (16, 24, 32)

WRAP_KEY_INFO = b"authkms/kms/wrap-data-key/v1"
FINGERPRINT_INFO = b"authkms/kms/root-key-fingerprint/v1"
VERIFY_KEY_INFO = b"authkms/kms/data-key-hash/v1"
# Before named keys there was one blind-index key per field; ``default`` keeps it, so hashes callers stored
# stay valid. Every other named key's info names the key (length-prefixed, under its own label), so no two
# keys share a blind-index key.
LEGACY_BLIND_INDEX_INFO_PREFIX = b"blind-index:"
LEGACY_BLIND_INDEX_KEY_NAME = "default"
BLIND_INDEX_INFO_PREFIX = b"authkms/kms/blind-index/v2"


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument("VALIDATION_ERROR", message)


def validate_parameters(seed: str, salt: str | bytes, iterations: int, key_length: int) -> bytes:
    """Check the derivation inputs; returns the salt as bytes. Messages never echo the secrets."""
    if not isinstance(seed, str) or not seed.strip():
        raise _invalid("kms.seed must not be empty")
    if len(seed) < MIN_SEED_CHARS:
        raise _invalid(f"kms.seed must be at least {MIN_SEED_CHARS} characters")
    salt_bytes = salt.encode() if isinstance(salt, str) else bytes(salt)
    if len(salt_bytes) < MIN_SALT_BYTES:
        raise _invalid(f"kms.salt must be at least {MIN_SALT_BYTES} bytes")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < MIN_ITERATIONS:
        raise _invalid(f"kms.iterations must be an integer >= {MIN_ITERATIONS}")
    if key_length not in KEY_LENGTHS:
        raise _invalid("kms.key_length must be 16, 24 or 32")
    return salt_bytes


class RootKey:
    """Root key material. ``repr``/``str`` never show it; ``wipe()`` zeroes the buffer (best effort)."""

    __slots__ = ("_key",)

    def __init__(self, material: bytes) -> None:
        if len(material) not in KEY_LENGTHS:
            raise ValueError("root key must be 16, 24 or 32 bytes")
        self._key = bytearray(material)

    def __repr__(self) -> str:
        return f"RootKey(<{len(self._key)} bytes hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("RootKey cannot be pickled")

    @property
    def length(self) -> int:
        return len(self._key)

    @property
    def wiped(self) -> bool:
        return not any(self._key)

    def derive(self, info: bytes, length: int = 32) -> bytes:
        """A subkey bound to ``info`` (HKDF-SHA256, no salt: the root key is already uniform)."""
        if self.wiped:
            raise RuntimeError("root key was wiped")
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(bytes(self._key))

    def wrap_key(self) -> bytes:
        return self.derive(WRAP_KEY_INFO)

    def fingerprint(self) -> str:
        """A non-secret name for this root key (16 hex chars of an HKDF output): which root wrapped a stored key."""
        return self.derive(FINGERPRINT_INFO, 8).hex()

    def material_to_wrap(self) -> bytes:
        """The key bytes, only to be wrapped under another root key (the service secret; see ``internal.biz``)."""
        if self.wiped:
            raise RuntimeError("root key was wiped")
        return bytes(self._key)

    def verification_key(self) -> bytes:
        return self.derive(VERIFY_KEY_INFO)

    def blind_index_key(self, key_name: str, field: str) -> bytes:
        if key_name == LEGACY_BLIND_INDEX_KEY_NAME:
            return self.derive(LEGACY_BLIND_INDEX_INFO_PREFIX + field.encode())
        name = key_name.encode()
        return self.derive(BLIND_INDEX_INFO_PREFIX + len(name).to_bytes(2, "big") + name + b":" + field.encode())

    def wipe(self) -> None:
        for i in range(len(self._key)):
            self._key[i] = 0


def derive_root_key(seed: str, salt: str | bytes, iterations: int, key_length: int = 32) -> RootKey:
    """PBKDF2-HMAC-SHA256(seed, salt). CPU-heavy (600k iterations ≈ 0.5 s): prefer the async helper."""
    salt_bytes = validate_parameters(seed, salt, iterations, key_length)
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=key_length, salt=salt_bytes, iterations=iterations)
    return RootKey(kdf.derive(seed.encode()))


async def derive_root_key_async(seed: str, salt: str | bytes, iterations: int, key_length: int = 32) -> RootKey:
    """``derive_root_key`` in a worker thread, so the event loop keeps serving while it runs."""
    validate_parameters(seed, salt, iterations, key_length)
    return await asyncio.to_thread(derive_root_key, seed, salt, iterations, key_length)
