"""The users table as KMS maintenance sees it (implements ``internal.biz.kms_admin.UsersPiiStore``): SQL only.

The re-encryption itself (what to decrypt, reseal and re-index) is ``KeyAdmin.maintenance`` in biz, and so is
reading key versions out of envelopes: this module never looks inside a ciphertext.

``pii_key_version`` is the lowest version of the users' key among a row's ciphertexts (0: the row was
written under ``default`` before named keys), so rows to re-encrypt are found by index. A batch of changes
is applied in one transaction, and each UPDATE only applies if the row's ciphertexts are still the ones that
were read: a concurrent change by the user wins and the row is simply looked at again on the next run.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from internal.biz import pii
from internal.biz.kms_admin import ResealedPii, StoredPii
from internal.data.errors import translate_driver_errors

# (field name bound into the ciphertext, column)
_COLUMNS: tuple[tuple[str, str], ...] = (
    (pii.EMAIL, "email_encrypted"),
    (pii.PHONE, "phone_encrypted"),
    (pii.NAME, "name_encrypted"),
    (pii.TOTP_SECRET, "totp_secret_encrypted"),
)
_HASH_COLUMNS = {pii.EMAIL: "email_hash", pii.PHONE: "phone_hash", pii.NAME: "name_hash"}
_ANY_CIPHERTEXT = " OR ".join(f"{column} IS NOT NULL" for _, column in _COLUMNS)
_PENDING = f"(pii_key_version < $1 OR (pii_key_version IS NULL AND ({_ANY_CIPHERTEXT})))"
_SELECT_COLUMNS = ", ".join(column for _, column in _COLUMNS)
_GUARD = " AND ".join(f"{column} IS NOT DISTINCT FROM ${i + 9}" for i, (_, column) in enumerate(_COLUMNS))
# $6..$8: new blind indexes, NULL where the row keeps its own (only rows from before the users' key get new ones).
_UPDATE = f"""
    UPDATE users SET email_encrypted = $2, phone_encrypted = $3, name_encrypted = $4, totp_secret_encrypted = $5,
                     email_hash = COALESCE($6, email_hash), phone_hash = COALESCE($7, phone_hash),
                     name_hash = COALESCE($8, name_hash), pii_key_version = $13
     WHERE id = $1 AND {_GUARD}
"""
# The distinct leading bytes of every stored PII ciphertext; biz reads the key version out of them.
_PREFIXES = f"""
    SELECT DISTINCT substring(c FROM 1 FOR $1) AS p
      FROM users, LATERAL (VALUES {", ".join(f"({column})" for _, column in _COLUMNS)}) AS t(c)
     WHERE c IS NOT NULL
"""


class PgUsersPiiStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def pending_count(self, active_version: int) -> int:
        return int(await self._pool.fetchval(f"SELECT count(*) FROM users WHERE {_PENDING}", active_version))

    @translate_driver_errors
    async def pending(self, active_version: int, after_id: int, limit: int) -> list[StoredPii]:
        rows = await self._pool.fetch(
            f"SELECT id, {_SELECT_COLUMNS} FROM users WHERE id > $2 AND {_PENDING} ORDER BY id LIMIT $3",
            active_version,
            after_id,
            limit,
        )
        return [
            StoredPii(
                int(row["id"]),
                {field: bytes(row[column]) if row[column] is not None else None for field, column in _COLUMNS},
            )
            for row in rows
        ]

    @translate_driver_errors
    async def replace(self, changes: Sequence[tuple[StoredPii, ResealedPii]]) -> int:
        applied = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for old, new in changes:
                result = await conn.execute(
                    _UPDATE,
                    old.user_id,
                    *(new.values.get(field) for field, _ in _COLUMNS),
                    *(new.hashes.get(field) for field in _HASH_COLUMNS),
                    *(old.values.get(field) for field, _ in _COLUMNS),
                    new.lowest_version,
                )
                applied += result.endswith(" 1")
        return applied

    @translate_driver_errors
    async def ciphertext_prefixes(self, size: int) -> set[bytes]:
        return {bytes(r["p"]) for r in await self._pool.fetch(_PREFIXES, size)}
