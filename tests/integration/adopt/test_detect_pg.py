"""`migrate up` and start-up recognise the Go service's database and refuse any other foreign schema at a
version we know, naming what differs, without applying anything."""

from __future__ import annotations

import asyncpg
import pytest

from internal.data.migrate import (
    ForeignSchema,
    GoServiceDatabase,
    discover,
    migrate_down,
    migrate_up,
    schema_version,
    verify_schema,
)
from tests.integration.adopt.go_service import GoAccount, migrate_like_go, write_go_database


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()


@pytest.mark.parametrize("go_version", [1, 2])
async def test_go_service_database_is_recognised_and_left_alone(own_db: str, go_version: int) -> None:
    conn = await asyncpg.connect(own_db)
    try:
        await migrate_like_go(conn, go_version)
    finally:
        await conn.close()
    before = await tables(own_db)
    with pytest.raises(GoServiceDatabase, match=rf"migrated by the Go service .*version {go_version}.*migrate adopt"):
        await migrate_up(own_db)
    with pytest.raises(GoServiceDatabase, match="migrate adopt"):
        await verify_schema(own_db)
    with pytest.raises(GoServiceDatabase):  # our down files would drop its tables
        await migrate_down(own_db)
    assert await schema_version(own_db) == (go_version, False)
    assert await tables(own_db) == before  # none of our later migrations ran on top of its earlier ones


async def test_go_service_database_with_rows_is_recognised(own_db: str) -> None:
    await write_go_database(own_db, [GoAccount("alice", "pw-alice-123", "alice@example.com", "+8613800000001", "A")])
    with pytest.raises(GoServiceDatabase):
        await migrate_up(own_db)
    assert "audit_events" not in await tables(own_db)


async def test_foreign_users_table_at_our_version_is_refused_naming_the_columns(own_db: str) -> None:
    conn = await asyncpg.connect(own_db)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
        )
        await conn.execute("INSERT INTO schema_migrations VALUES (1, false)")
        await conn.execute("CREATE TABLE users (id serial PRIMARY KEY, username text, password text, email text)")
    finally:
        await conn.close()
    with pytest.raises(ForeignSchema) as refused:
        await migrate_up(own_db)
    message = str(refused.value)
    assert "version 1" in message
    assert "users lacks column(s)" in message and "totp_enabled" in message and "pii_key_version" in message
    assert "users has column(s) email that ours does not" in message
    assert "username is text, not character varying(32)" in message
    assert await schema_version(own_db) == (1, False)
    assert await tables(own_db) == {"schema_migrations", "users"}


async def test_a_table_our_later_migrations_create_must_not_exist(own_db: str) -> None:
    assert await migrate_up(own_db, steps=2) == [1, 2]
    conn = await asyncpg.connect(own_db)
    try:
        await conn.execute("CREATE TABLE audit_events (id serial PRIMARY KEY, what text)")
    finally:
        await conn.close()
    with pytest.raises(ForeignSchema, match="table audit_events exists but our later migrations create it"):
        await migrate_up(own_db)
    assert await schema_version(own_db) == (2, False)


async def test_a_column_an_operator_added_to_our_table_is_no_foreign_schema(own_db: str) -> None:
    await migrate_up(own_db, steps=3)
    conn = await asyncpg.connect(own_db)
    try:
        await conn.execute("ALTER TABLE users ADD COLUMN crm_id text")
    finally:
        await conn.close()
    await verify_schema(own_db)
    assert len(await migrate_up(own_db)) == len(discover()) - 3


async def test_our_own_schema_passes_at_every_version(own_db: str) -> None:
    for migration in discover():
        assert await migrate_up(own_db, steps=1) == [migration.version]
        await verify_schema(own_db)
    assert await migrate_up(own_db) == []
