"""Re-encryption targets: stores of ciphertexts that maintenance moves onto the active key.

A target (e.g. ``internal.data.kms_reencrypt.UserPiiReencryptor`` for the users table) re-encrypts in
small committed batches from a cursor, so a maintenance run can stop anywhere and resume, and reports
which key versions its stored values still use, so that no key is destroyed while anything needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from internal.biz.pii import FieldCipher


@dataclass(frozen=True)
class ReencryptBatch:
    scanned: int  # records looked at in this batch
    reencrypted: int  # records now fully under the active key
    failed: int  # records that could not be decrypted (left untouched, logged by id)
    skipped: int  # records changed concurrently (left for the next run)
    cursor: str | None  # resume point; None when the end was reached


class ReencryptionTarget(Protocol):
    name: str

    async def pending(self, active_version: int) -> int:
        """Records that still hold a value under a key older than ``active_version``."""
        ...

    async def reencrypt_batch(
        self, cipher: FieldCipher, active_version: int, cursor: str | None, limit: int
    ) -> ReencryptBatch:
        """Re-encrypt up to ``limit`` records after ``cursor`` under the active key; commit the batch."""
        ...

    async def versions_in_use(self) -> set[int]:
        """Every key version any stored value of this target still needs."""
        ...
