"""Account lifecycle storage in PostgreSQL: sessions as listed, address replacement, erasure, purge.

Implements ``internal.biz.account.AccountRepo`` (reset codes: ``internal.data.reset_codes``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from internal.biz import pii
from internal.biz.account import SessionInfo
from internal.biz.errors import Conflict
from internal.data.errors import translate_driver_errors

_TAKEN = "username, email or phone is already registered"


class PgAccountRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def active_sessions(self, user_id: int) -> list[SessionInfo]:
        rows = await self._pool.fetch(
            """
            SELECT id, created_at, last_used_at, expires_at, client_addr, user_agent
              FROM refresh_token_families
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
             ORDER BY created_at DESC
             LIMIT 500
            """,
            user_id,
        )
        return [
            SessionInfo(
                session_id=str(r["id"]),
                created_at=r["created_at"],
                last_used_at=r["last_used_at"],
                expires_at=r["expires_at"],
                client_addr=r["client_addr"] or "",
                user_agent=r["user_agent"] or "",
            )
            for r in rows
        ]

    @translate_driver_errors
    async def owns_active_session(self, user_id: int, session_id: str) -> bool:
        try:
            family = uuid.UUID(session_id)
        except ValueError:
            return False
        return bool(
            await self._pool.fetchval(
                """
                SELECT EXISTS (SELECT 1 FROM refresh_token_families
                                WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now())
                """,
                family,
                user_id,
            )
        )

    @translate_driver_errors
    async def find_active_user_id(self, field: str, hashes: Sequence[str]) -> int | None:
        column = {pii.EMAIL: "email_hash", pii.PHONE: "phone_hash"}[field]
        value = await self._pool.fetchval(
            f"SELECT id FROM users WHERE {column} = ANY($1::bpchar[]) AND deleted_at IS NULL LIMIT 1", list(hashes)
        )
        return int(value) if value is not None else None

    @translate_driver_errors
    async def replace_email(self, user_id: int, email: pii.IndexedField, key_hash: str, earlier: Sequence[str]) -> None:
        # One statement: value and both blind indexes change together; the unique indexes decide conflicts.
        await self._replace(
            """
            UPDATE users SET email_encrypted = $2, email_hash = $3, email_key_hash = $4,
                   pii_key_version = LEAST(COALESCE(pii_key_version, $5), $5)
             WHERE id = $1 AND deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM users o WHERE o.id <> $1
                                  AND (o.email_hash = ANY($6::bpchar[]) OR o.phone_hash = ANY($6::bpchar[])))
            """,
            user_id,
            email.ciphertext,
            email.blind_index,
            key_hash,
            email.key_version,
            list(earlier),
        )

    @translate_driver_errors
    async def replace_phone(self, user_id: int, phone: pii.IndexedField, earlier: Sequence[str]) -> None:
        await self._replace(
            """
            UPDATE users SET phone_encrypted = $2, phone_hash = $3,
                   pii_key_version = LEAST(COALESCE(pii_key_version, $4), $4)
             WHERE id = $1 AND deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM users o WHERE o.id <> $1
                                  AND (o.email_hash = ANY($5::bpchar[]) OR o.phone_hash = ANY($5::bpchar[])))
            """,
            user_id,
            phone.ciphertext,
            phone.blind_index,
            phone.key_version,
            list(earlier),
        )

    async def _replace(self, query: str, *args: Any) -> None:
        try:
            status = await self._pool.execute(query, *args)
        except asyncpg.UniqueViolationError:
            status = ""
        if not status.endswith(" 1"):
            # The same answer whoever holds it (and for the caller's own row gone missing).
            raise Conflict("USER_EXISTS", _TAKEN)

    @translate_driver_errors
    async def erase(self, user_id: int, password_hash: str, username_hash: str) -> list[str]:
        async with self._pool.acquire() as conn, conn.transaction():
            erased = await conn.execute(
                """
                UPDATE users
                   SET username = '~' || id::text, username_key = NULL, username_hash = $3, password = $2,
                       email_encrypted = NULL, phone_encrypted = NULL, name_encrypted = NULL, name_hash = NULL,
                       totp_secret_encrypted = NULL, totp_enabled = FALSE, totp_last_step = NULL,
                       pii_key_version = NULL, deleted_at = now()
                 WHERE id = $1 AND deleted_at IS NULL
                """,
                user_id,
                password_hash,
                username_hash,
            )
            if not erased.endswith(" 1"):
                return []
            rows = await conn.fetch("DELETE FROM refresh_token_families WHERE user_id = $1 RETURNING id", user_id)
        return [str(r["id"]) for r in rows]

    @translate_driver_errors
    async def purge_deleted(self, grace: timedelta) -> int:
        status = await self._pool.execute(
            "DELETE FROM users WHERE deleted_at IS NOT NULL AND deleted_at < now() - $1::interval", grace
        )
        return int(status.split()[-1])
