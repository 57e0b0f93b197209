"""Users' PII as the replicas store it: sealed under the reserved key ``authkms.users``, which no kms.v1
credential may use. The suite seals and opens it in-process, with a key ring built the way the container builds
it from the replicas' own configuration, on the same database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from internal.biz import pii
from internal.biz.errors import DomainError
from internal.biz.kms import USERS_KEY, NoKeyEvents
from internal.biz.kms_cipher import KmsCipher, UsersPiiCipher
from internal.conf.config import load_config
from internal.container import key_ring_resource
from internal.data.audit import PgAuditLog
from internal.data.kms import PgKeyRepo
from tests.e2e.harness import ROOT

T = TypeVar("T")
PII_COLUMNS = (("email", "email_encrypted"), ("phone", "phone_encrypted"))


def with_users_cipher(
    database_url: str, env: dict[str, str], work: Callable[[UsersPiiCipher, asyncpg.Pool], Awaitable[T]]
) -> T:
    """Run ``work`` with the users' PII cipher of the replicas configured by ``env``."""

    async def run() -> T:
        conf = load_config(ROOT / "configs", environ=env).kms
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            resource = key_ring_resource(conf, PgKeyRepo(pool), NoKeyEvents(), PgAuditLog(pool))
            ring = await anext(resource)
            try:
                kms = KmsCipher(
                    ring, max_plaintext_bytes=conf.max_plaintext_bytes, max_batch_items=conf.max_batch_items
                )
                return await work(UsersPiiCipher(kms), pool)
            finally:
                await resource.aclose()
        finally:
            await pool.close()

    return asyncio.run(run())


def users_key_version(database_url: str, env: dict[str, str]) -> int:
    async def active(_: UsersPiiCipher, pool: asyncpg.Pool) -> int:
        query = "SELECT version FROM kms_data_keys WHERE key_name = $1 AND status = 'active'"
        return int(await pool.fetchval(query, USERS_KEY))

    return with_users_cipher(database_url, env, active)


def seed_users(database_url: str, env: dict[str, str], n: int) -> list[int]:
    """n users whose email is sealed under the users' key's active version, bound to the row, as Register does."""

    async def seed(cipher: UsersPiiCipher, pool: asyncpg.Pool) -> list[int]:
        ids = [
            int(r["id"])
            for r in await pool.fetch("SELECT nextval('users_id_seq') AS id FROM generate_series(1, $1)", n)
        ]
        rows: list[tuple[Any, ...]] = []
        for i in ids:
            email = f"seed{i}@example.com"
            sealed = await cipher.encrypt(pii.EMAIL, email.encode(), pii.user_context(i))
            rows.append(
                (i, f"seed_{i}", "x", sealed.ciphertext, cipher.blind_index(pii.EMAIL, email), sealed.key_version)
            )
        await pool.executemany(
            "INSERT INTO users (id, username, password, email_encrypted, email_hash, pii_key_version) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )
        return ids

    return with_users_cipher(database_url, env, seed)


def all_pii_decrypts(database_url: str, env: dict[str, str]) -> tuple[int, int]:
    """(values that decrypt, values stored) over every users row's email and phone."""

    async def check(cipher: UsersPiiCipher, pool: asyncpg.Pool) -> tuple[int, int]:
        good = total = 0
        for row in await pool.fetch("SELECT id, email_encrypted, phone_encrypted FROM users ORDER BY id"):
            for field, column in PII_COLUMNS:
                if row[column] is None:
                    continue
                total += 1
                try:
                    await cipher.decrypt(field, bytes(row[column]), pii.user_context(row["id"]))
                except DomainError:
                    continue
                good += 1
        return good, total

    return with_users_cipher(database_url, env, check)


def seeded_emails(database_url: str, env: dict[str, str], ids: list[int], active: int) -> int:
    """How many of the seeded users' emails open to their value and are under the users' key at ``active``."""

    async def check(cipher: UsersPiiCipher, pool: asyncpg.Pool) -> int:
        rows = await pool.fetch("SELECT id, email_encrypted FROM users WHERE id = ANY($1::bigint[])", ids)
        ok = 0
        for row in rows:
            ciphertext = bytes(row["email_encrypted"])
            opened = await cipher.decrypt(pii.EMAIL, ciphertext, pii.user_context(row["id"]))
            ok += opened == f"seed{row['id']}@example.com".encode() and cipher.is_current(ciphertext, active)
        return ok

    return with_users_cipher(database_url, env, check)
