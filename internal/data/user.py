"""PostgreSQL users repository (implements ``internal.biz.user.UserRepo``).

Only ciphertexts and keyed blind indexes of PII reach this table; the unique indexes on
``lower(username)``, ``email_hash`` and ``phone_hash`` are what make registration race-free.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from internal.biz.errors import Conflict
from internal.biz.user import KeylessUser, NewUser, User
from internal.data.errors import translate_driver_errors

_COLUMNS = (
    "id, username, password, email_encrypted, phone_encrypted, name_encrypted, "
    "totp_secret_encrypted, totp_enabled, totp_last_step, created_at"
)


def _user(row: Any) -> User | None:
    if row is None:
        return None
    return User(
        id=row["id"],
        username=row["username"],
        password_hash=row["password"],
        email_encrypted=row["email_encrypted"],
        phone_encrypted=row["phone_encrypted"],
        name_encrypted=row["name_encrypted"],
        totp_secret_encrypted=row["totp_secret_encrypted"],
        totp_enabled=row["totp_enabled"],
        totp_last_step=row["totp_last_step"],
        created_at=row["created_at"],
    )


class PgUserRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def next_id(self) -> int:
        # Taken before the INSERT so PII ciphertexts can be bound to the row id (AEAD context).
        return int(await self._pool.fetchval("SELECT nextval('users_id_seq')"))

    @translate_driver_errors
    async def create(self, user: NewUser) -> None:
        try:
            inserted = await self._pool.execute(
                """
                INSERT INTO users (id, username, password, email_encrypted, email_hash, phone_encrypted,
                                   phone_hash, name_encrypted, name_hash, pii_key_version, username_key,
                                   email_key_hash)
                SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $13
                 WHERE NOT EXISTS (
                     SELECT 1 FROM users WHERE email_hash = ANY($11::bpchar[]) OR phone_hash = ANY($11::bpchar[])
                        OR username_hash = $14
                 )
                """,
                user.id,
                user.username,
                user.password_hash,
                user.email_encrypted,
                user.email_hash,
                user.phone_encrypted,
                user.phone_hash,
                user.name_encrypted,
                user.name_hash,
                user.pii_key_version,
                list(user.earlier_hashes),
                user.username_key,
                user.email_key_hash,
                user.username_hash,
            )
        except asyncpg.UniqueViolationError:
            inserted = ""
        if not inserted.endswith(" 1"):
            # Deliberately the same answer for every unique index (see AuthUsecase.register).
            raise Conflict("USER_EXISTS", "username, email or phone is already registered")

    @translate_driver_errors
    async def get(self, user_id: int) -> User | None:
        return _user(await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id))

    @translate_driver_errors
    async def find_by_username(self, username: str) -> User | None:
        return _user(
            await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM users WHERE lower(username) = lower($1)",
                username,
            )
        )

    @translate_driver_errors
    async def find_by_email_hash(self, *email_hashes: str) -> User | None:
        # A deleted account keeps its blind indexes (they block reuse) but is nobody's login any more.
        query = f"SELECT {_COLUMNS} FROM users WHERE email_hash = ANY($1::bpchar[]) AND deleted_at IS NULL LIMIT 1"
        return _user(await self._pool.fetchrow(query, list(email_hashes)))

    @translate_driver_errors
    async def find_by_phone_hash(self, *phone_hashes: str) -> User | None:
        query = f"SELECT {_COLUMNS} FROM users WHERE phone_hash = ANY($1::bpchar[]) AND deleted_at IS NULL LIMIT 1"
        return _user(await self._pool.fetchrow(query, list(phone_hashes)))

    @translate_driver_errors
    async def update_password(self, user_id: int, password_hash: str) -> None:
        await self._pool.execute("UPDATE users SET password = $2 WHERE id = $1", user_id, password_hash)

    @translate_driver_errors
    async def set_pending_totp(self, user_id: int, secret_encrypted: bytes, key_version: int) -> None:
        await self._pool.execute(
            """
            UPDATE users
               SET totp_secret_encrypted = $2, totp_enabled = FALSE,
                   pii_key_version = LEAST(COALESCE(pii_key_version, $3), $3)
             WHERE id = $1 AND NOT totp_enabled
            """,
            user_id,
            secret_encrypted,
            key_version,
        )

    @translate_driver_errors
    async def enable_totp(self, user_id: int, step: int) -> bool:
        row = await self._pool.fetchval(
            """
            UPDATE users SET totp_enabled = TRUE, totp_last_step = $2
             WHERE id = $1 AND NOT totp_enabled AND totp_secret_encrypted IS NOT NULL
               AND (totp_last_step IS NULL OR totp_last_step < $2)
            RETURNING id
            """,
            user_id,
            step,
        )
        return row is not None

    @translate_driver_errors
    async def disable_totp(self, user_id: int) -> None:
        await self._pool.execute(
            "UPDATE users SET totp_enabled = FALSE, totp_secret_encrypted = NULL WHERE id = $1", user_id
        )

    @translate_driver_errors
    async def consume_totp_step(self, user_id: int, step: int) -> bool:
        # Atomic single use: of two concurrent requests with the same code, one UPDATE matches.
        row = await self._pool.fetchval(
            """
            UPDATE users SET totp_last_step = $2
             WHERE id = $1 AND totp_enabled AND (totp_last_step IS NULL OR totp_last_step < $2)
            RETURNING id
            """,
            user_id,
            step,
        )
        return row is not None

    @translate_driver_errors
    async def without_identifier_keys(self, after_id: int, limit: int) -> list[KeylessUser]:
        rows = await self._pool.fetch(
            """
            SELECT id, username, email_encrypted FROM users
             WHERE username_key IS NULL AND deleted_at IS NULL AND id > $1 ORDER BY id LIMIT $2
            """,
            after_id,
            limit,
        )
        return [KeylessUser(r["id"], r["username"], r["email_encrypted"]) for r in rows]

    @translate_driver_errors
    async def set_identifier_keys(self, user_id: int, username_key: str, email_key_hash: str | None) -> bool:
        try:
            status = await self._pool.execute(
                "UPDATE users SET username_key = $2, email_key_hash = $3"
                " WHERE id = $1 AND username_key IS NULL AND deleted_at IS NULL",
                user_id,
                username_key,
                email_key_hash,
            )
        except asyncpg.UniqueViolationError:
            return False
        return status.endswith(" 1")
