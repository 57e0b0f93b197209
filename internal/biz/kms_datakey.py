"""Data keys for callers (kms.v1 GenerateDataKey / DecryptDataKey), as AWS KMS ``GenerateDataKey`` and Vault's
``datakey``: a caller asks once for a fresh key, encrypts locally at memory speed, and stores the wrapped copy
beside its data (docs/api.md "Data keys").

A wrapped data key is an ordinary envelope (``internal.pkg.kms.envelope``) sealed under the named key's active
version, with the reserved field name ``DATA_KEY_FIELD`` and the caller's context as associated data. So it
carries the version that wrapped it, opens only under the same key and context, and obeys that version's state
(pending destruction refuses it) exactly like a field ciphertext. The field RPCs refuse the reserved field name,
so a wrapped data key never opens as a field value (which would hand its key to a ``kms.decrypt`` caller) and a
chosen plaintext never passes for a generated key.

Access control is the service's: the caller's credential holds ``kms.datakey`` and may use the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from internal.biz.errors import DomainError, InvalidArgument
from internal.biz.kms_cipher import KmsCipher
from internal.biz.kms_keyring import KeyRing
from internal.pkg.kms.datakey import new_material
from internal.pkg.kms.envelope import DATA_KEY_SIZE, ciphertext_invalid

DATA_KEY_FIELD = "authkms.data_key"
# Callers use the data key locally with this algorithm, whatever algorithm the named key wraps it with.
DATA_KEY_ALGORITHM = "AES-256-GCM"
# A wrapped key is a 32-byte envelope (67 bytes); anything much longer is not one of ours.
MAX_WRAPPED_KEY_BYTES = 256


@dataclass(frozen=True)
class GeneratedDataKey:
    plaintext: bytes = dataclasses.field(repr=False)
    wrapped_key: bytes
    key_name: str
    key_version: int
    algorithm: str = DATA_KEY_ALGORITHM


@dataclass(frozen=True)
class UnwrappedDataKey:
    plaintext: bytes = dataclasses.field(repr=False)
    key_version: int


def reserved_field() -> InvalidArgument:
    return InvalidArgument(
        "VALIDATION_ERROR", f"the field name {DATA_KEY_FIELD} is reserved for data keys", {"field": "field"}
    )


def refuse_reserved_field(field: str) -> None:
    """VALIDATION_ERROR if a field RPC names the data keys' reserved field."""
    if field == DATA_KEY_FIELD:
        raise reserved_field()


class DataKeyUsecase:
    """Makes and unwraps callers' data keys under a named key (already validated and authorized)."""

    def __init__(self, cipher: KmsCipher, ring: KeyRing) -> None:
        self._cipher = cipher
        self._ring = ring  # for its audit writer

    def __repr__(self) -> str:
        return "DataKeyUsecase(<keys hidden>)"

    async def generate(self, key_name: str, context: Mapping[str, str], *, caller: str) -> GeneratedDataKey:
        """A fresh 32-byte key and its copy wrapped under the key's active version, bound to ``context``.
        Errors: VALIDATION_ERROR (context), KEY_NOT_FOUND, NO_ACTIVE_KEY. Audited without key bytes."""
        details: dict[str, str | int | bool] = {"key_name": key_name, "credential": caller}
        material = new_material()
        try:
            sealed = await self._cipher.encrypt(key_name, DATA_KEY_FIELD, material, context)
        except DomainError as exc:
            await self._ring.audit("kms.data_key_generate", "failure", details | {"reason": exc.reason})
            raise
        await self._ring.audit("kms.data_key_generate", "success", details | {"key_version": sealed.key_version})
        return GeneratedDataKey(material, sealed.ciphertext, key_name, sealed.key_version)

    async def decrypt(
        self, key_name: str, wrapped_key: bytes, context: Mapping[str, str], *, caller: str
    ) -> UnwrappedDataKey:
        """The data key inside ``wrapped_key``. Another key's or context's wrapped key, or tampering →
        CIPHERTEXT_INVALID; KEY_NOT_FOUND for a destroyed version; KEY_PENDING_DESTRUCTION. Audited."""
        details: dict[str, str | int | bool] = {"key_name": key_name, "credential": caller}
        try:
            if not isinstance(wrapped_key, bytes) or not wrapped_key or len(wrapped_key) > MAX_WRAPPED_KEY_BYTES:
                raise InvalidArgument(
                    "VALIDATION_ERROR",
                    f"wrapped_key must be 1..{MAX_WRAPPED_KEY_BYTES} bytes from GenerateDataKey",
                    {"field": "wrapped_key"},
                )
            opened = await self._cipher.decrypt(key_name, DATA_KEY_FIELD, wrapped_key, context)
            if len(opened.plaintext) != DATA_KEY_SIZE:
                raise ciphertext_invalid()
        except DomainError as exc:
            await self._ring.audit("kms.data_key_decrypt", "failure", details | {"reason": exc.reason})
            raise
        await self._ring.audit("kms.data_key_decrypt", "success", details | {"key_version": opened.key_version})
        return UnwrappedDataKey(opened.plaintext, opened.key_version)
