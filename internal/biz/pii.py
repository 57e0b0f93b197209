"""How user PII meets the KMS: the cipher interface biz relies on, and the binding conventions.

Users' PII lives under the reserved key ``authkms.users`` (``internal.biz.kms.USERS_KEY``), which no service
credential can use. Every stored PII ciphertext is bound (AEAD associated data) to that key, its field and
its record, so a value copied into another column or another user's row fails to decrypt. Blind indexes are
keyed hashes of a normalized value under the users' key's own blind-index keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

EMAIL = "email"
PHONE = "phone"
NAME = "name"
TOTP_SECRET = "totp_secret"
USER_PII_FIELDS = (EMAIL, PHONE, NAME, TOTP_SECRET)


def user_context(user_id: int) -> dict[str, str]:
    """Associated-data context that binds a ciphertext to one users row."""
    return {"table": "users", "user_id": str(user_id)}


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    key_version: int


class FieldCipher(Protocol):
    """Field-level encryption and blind indexes of users' PII (``internal.biz.kms_cipher.UsersPiiCipher``)."""

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> Sealed: ...

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes: ...

    def blind_index(self, field: str, value: str) -> str:
        """64 hex chars: HMAC-SHA256 under a per-field key over the normalized value."""
        ...

    def lookup_hashes(self, field: str, value: str) -> list[str]:
        """Every blind index a stored row for ``value`` may hold (``blind_index`` first, then any earlier one)."""
        ...


@dataclass(frozen=True)
class IndexedField:
    """A PII value as a users row stores it: ciphertext, the users' key version it is under, blind index."""

    ciphertext: bytes
    key_version: int
    blind_index: str


async def seal_indexed(cipher: FieldCipher, field: str, value: str, context: Mapping[str, str]) -> IndexedField:
    """Encrypt a normalised value and compute its blind index."""
    sealed = await cipher.encrypt(field, value.encode(), context)
    return IndexedField(sealed.ciphertext, sealed.key_version, cipher.blind_index(field, value))
