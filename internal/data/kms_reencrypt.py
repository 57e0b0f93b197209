"""Re-encryption of users PII onto the active data key (a ``internal.pkg.kms.ReencryptionTarget``).

Rows whose ``pii_key_version`` (the lowest key version any of the row's ciphertexts uses) is below the
active version are processed in id order, ``limit`` rows per batch, each batch in its own transaction,
so a run can stop anywhere and resume from the returned cursor. Each value is decrypted with its field
name and the row's context (``internal.biz.pii.user_context``) and sealed again under the active key.
The UPDATE only applies if the row's ciphertexts are still the ones that were read: a concurrent
change by the user wins and the row is simply looked at again on the next run.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from internal.biz import pii
from internal.biz.errors import DomainError
from internal.data.errors import translate_driver_errors
from internal.pkg.kms.envelope import KEY_VERSION_OFFSET, MAGIC, MIN_CIPHERTEXT_SIZE, parse_header
from internal.pkg.kms.targets import ReencryptBatch

log = logging.getLogger(__name__)

# (field name bound into the ciphertext, column)
_COLUMNS: tuple[tuple[str, str], ...] = (
    (pii.EMAIL, "email_encrypted"),
    (pii.PHONE, "phone_encrypted"),
    (pii.NAME, "name_encrypted"),
    (pii.TOTP_SECRET, "totp_secret_encrypted"),
)
_ANY_CIPHERTEXT = " OR ".join(f"{column} IS NOT NULL" for _, column in _COLUMNS)
_PENDING = f"(pii_key_version < $1 OR (pii_key_version IS NULL AND ({_ANY_CIPHERTEXT})))"
_SELECT_COLUMNS = ", ".join(column for _, column in _COLUMNS)
_GUARD = " AND ".join(f"{column} IS NOT DISTINCT FROM ${i + 6}" for i, (_, column) in enumerate(_COLUMNS))
_UPDATE = f"""
    UPDATE users SET email_encrypted = $2, phone_encrypted = $3, name_encrypted = $4,
                     totp_secret_encrypted = $5, pii_key_version = $10
     WHERE id = $1 AND {_GUARD}
"""
# The key version inside each stored envelope (uint32 big-endian at KEY_VERSION_OFFSET).
_VERSIONS_IN_USE = f"""
    SELECT pii_key_version AS v FROM users WHERE pii_key_version IS NOT NULL
    UNION
    SELECT ('x' || encode(substring(c FROM {KEY_VERSION_OFFSET + 1} FOR 4), 'hex'))::bit(32)::int
      FROM users, LATERAL (VALUES {", ".join(f"({column})" for _, column in _COLUMNS)}) AS t(c)
     WHERE c IS NOT NULL AND length(c) >= {MIN_CIPHERTEXT_SIZE} AND get_byte(c, 0) = {MAGIC}
"""


class UserPiiReencryptor:
    name = "users.pii"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def pending(self, active_version: int) -> int:
        return int(await self._pool.fetchval(f"SELECT count(*) FROM users WHERE {_PENDING}", active_version))

    @translate_driver_errors
    async def versions_in_use(self) -> set[int]:
        return {int(r["v"]) for r in await self._pool.fetch(_VERSIONS_IN_USE) if r["v"] is not None}

    async def _reseal(
        self, cipher: pii.FieldCipher, active_version: int, row: Any
    ) -> tuple[list[bytes | None], int] | None:
        """New column values and the row's lowest version, or None if some value does not decrypt."""
        context = pii.user_context(int(row["id"]))
        values: list[bytes | None] = []
        versions: list[int] = []
        for field, column in _COLUMNS:
            old = row[column]
            if old is None:
                values.append(None)
                continue
            try:
                current = parse_header(bytes(old)).key_version
                if current >= active_version:
                    values.append(bytes(old))
                    versions.append(current)
                    continue
                sealed = await cipher.encrypt(field, await cipher.decrypt(field, bytes(old), context), context)
            except DomainError as exc:
                log.warning(
                    "kms re-encryption: value does not decrypt; row left as is",
                    extra={"user_id": int(row["id"]), "field": field, "reason": exc.reason},
                )
                return None
            values.append(sealed.ciphertext)
            versions.append(sealed.key_version)
        return values, min(versions, default=active_version)

    @translate_driver_errors
    async def reencrypt_batch(
        self, cipher: pii.FieldCipher, active_version: int, cursor: str | None, limit: int
    ) -> ReencryptBatch:
        after = int(cursor) if cursor and cursor.isdigit() else 0
        rows = await self._pool.fetch(
            f"SELECT id, {_SELECT_COLUMNS} FROM users WHERE id > $2 AND {_PENDING} ORDER BY id LIMIT $3",
            active_version,
            after,
            limit,
        )
        updates: list[tuple[Any, ...]] = []
        failed = 0
        for row in rows:
            resealed = await self._reseal(cipher, active_version, row)
            if resealed is None:
                failed += 1
                continue
            values, lowest = resealed
            old = [row[column] for _, column in _COLUMNS]
            updates.append((row["id"], *values, *old, lowest))
        reencrypted = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for update in updates:
                result = await conn.execute(_UPDATE, *update)
                reencrypted += result.endswith(" 1")
        next_cursor = str(rows[-1]["id"]) if len(rows) == limit and rows else None
        return ReencryptBatch(
            scanned=len(rows),
            reencrypted=reencrypted,
            failed=failed,
            skipped=len(updates) - reencrypted,
            cursor=next_cursor,
        )
