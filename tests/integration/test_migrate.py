"""Migrations against a real PostgreSQL: golang-migrate's table, up/down, and the schema's guarantees."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from internal.data.migrate import discover, migrate_down, migrate_up, schema_version
from tests.helpers import with_database


@pytest.fixture
async def scratch_db(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"test_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres_server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_up_down_round_trip_keeps_golang_migrate_state(scratch_db: str) -> None:
    versions = [m.version for m in discover()]
    assert await migrate_up(scratch_db) == versions
    assert await schema_version(scratch_db) == (versions[-1], False)
    assert await migrate_up(scratch_db) == []
    assert await migrate_down(scratch_db, steps=len(versions)) == versions[::-1]
    assert await schema_version(scratch_db) == (None, False)
    conn = await asyncpg.connect(scratch_db)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert {t["tablename"] for t in tables} == {"schema_migrations"}
    finally:
        await conn.close()


async def test_dirty_state_refuses_to_migrate(scratch_db: str) -> None:
    await migrate_up(scratch_db, steps=1)
    conn = await asyncpg.connect(scratch_db)
    await conn.execute("UPDATE schema_migrations SET dirty = true")
    await conn.close()
    with pytest.raises(Exception, match="dirty"):
        await migrate_up(scratch_db)


async def test_concurrent_runners_apply_each_step_once(scratch_db: str) -> None:
    import asyncio

    results = await asyncio.gather(*(migrate_up(scratch_db) for _ in range(4)))
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in discover()]


async def test_database_allows_at_most_one_active_version_per_key(scratch_db: str) -> None:
    await migrate_up(scratch_db)
    insert = (
        "INSERT INTO kms_data_keys (key_name, id, version, algorithm, encrypted_key, key_hash, status) "
        "VALUES ($1, $2, $3, 'AES-256-GCM', '\\x00', repeat('0', 64), 'active')"
    )
    conn = await asyncpg.connect(scratch_db)
    try:
        await conn.execute("INSERT INTO kms_keys (name) VALUES ('orders')")
        await conn.execute(insert, "default", uuid.uuid4(), 1)
        # Versions are numbered per key: another key has its own version 1 and its own active version.
        await conn.execute(insert, "orders", uuid.uuid4(), 1)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "default", uuid.uuid4(), 2)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO kms_data_keys (key_name, id, version, algorithm, encrypted_key, key_hash, status) "
                "VALUES ('orders', $1, 1, 'AES-256-GCM', '\\x00', repeat('0', 64), 'inactive')",
                uuid.uuid4(),
            )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(insert, "nonexistent", uuid.uuid4(), 1)
        # Every status the service writes fits the column ('pending_destruction' is the longest).
        await conn.execute(
            "INSERT INTO kms_data_keys (key_name, id, version, algorithm, encrypted_key, key_hash, status, "
            "destroy_after) VALUES ('orders', $1, 2, 'AES-256-GCM', '\\x00', repeat('0', 64), "
            "'pending_destruction', now())",
            uuid.uuid4(),
        )
    finally:
        await conn.close()


async def test_schema_rejects_unknown_status_algorithm_and_key_names(pg_pool: asyncpg.Pool) -> None:
    insert = (
        "INSERT INTO kms_data_keys (key_name, id, version, algorithm, encrypted_key, key_hash, status) "
        "VALUES ('default', $1, $2, $3, '\\x00', repeat('0', 64), $4)"
    )
    async with pg_pool.acquire() as conn:
        for version, algorithm, status in [
            (900010, "DES", "inactive"),
            (900011, "AES-256-GCM", "bogus"),
            (900012, "AES-256-GCM", "pending_destruction"),  # a pending version must say when it goes
        ]:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(insert, uuid.uuid4(), version, algorithm, status)
        for name in ("Orders", "1orders", "", "o" * 64, "orders key"):
            with pytest.raises((asyncpg.CheckViolationError, asyncpg.StringDataRightTruncationError)):
                await conn.execute("INSERT INTO kms_keys (name) VALUES ($1)", name)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO kms_keys (name, destruction_wait) VALUES ('short.wait', '1 day')")
