"""`migrate adopt` refuses before changing anything: wrong source settings, a value that does not open, usernames
it cannot keep, a database that is not the Go service's; and the side schema it leaves while moving is refused by
`migrate up` and start-up until it has finished."""

from __future__ import annotations

import asyncpg
import pytest

from internal.biz.adopt import AdoptRefused, GoAdoption, Stage, open_go_keys
from internal.data.adopt import PgGoSource
from internal.data.migrate import AdoptionUnfinished, migrate_up, verify_schema
from internal.pkg.kms.legacy_go import GoSettings
from tests.integration.adopt.go_service import GoAccount, write_go_database

ACCOUNTS = [
    GoAccount("alice", "pw-alice-123", "alice@example.com", "+8613800000001", "Alice"),
    GoAccount("bob", "pw-bob-12345", "bob@example.com", "+8613800000002", "Bob"),
]


async def snapshot(url: str) -> tuple[object, ...]:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
        users = await conn.fetch("SELECT * FROM users ORDER BY id")
        version = await conn.fetchrow("SELECT version, dirty FROM schema_migrations")
        return tuple(map(tuple, tables)), tuple(map(tuple, users)), tuple(version)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "settings",
    [
        GoSettings(seed="another-seed-value"),
        GoSettings(salt="another-salt-value"),
        GoSettings(iterations=10_000),
    ],
    ids=["seed", "salt", "iterations"],
)
async def test_wrong_source_settings_change_nothing(own_db: str, settings: GoSettings) -> None:
    await write_go_database(own_db, ACCOUNTS)
    before = await snapshot(own_db)
    source = await PgGoSource.open(own_db)
    try:
        assert await source.stage() == Stage.GO
        with pytest.raises(AdoptRefused, match="3 data keys do not open") as refused:
            await open_go_keys(source, settings)
        assert "nothing was changed" in str(refused.value) and "another" not in str(refused.value)
    finally:
        await source.close()
    assert await snapshot(own_db) == before


async def test_a_value_that_does_not_open_refuses_before_the_conversion(own_db: str) -> None:
    accounts = await write_go_database(own_db, ACCOUNTS)
    conn = await asyncpg.connect(own_db)
    try:  # one byte of bob's phone ciphertext flipped
        stored = bytes(await conn.fetchval("SELECT phone_encrypted FROM users WHERE id = $1", accounts[1].id))
        tampered = stored[:-1] + (b"0" if stored[-1:] != b"0" else b"1")
        await conn.execute("UPDATE users SET phone_encrypted = $2 WHERE id = $1", accounts[1].id, tampered)
    finally:
        await conn.close()
    before = await snapshot(own_db)
    source = await PgGoSource.open(own_db)
    try:
        adoption = GoAdoption(source, await open_go_keys(source, GoSettings()))
        with pytest.raises(AdoptRefused, match=rf"users row {accounts[1].id}, phone: value does not open"):
            await adoption.check()
    finally:
        await source.close()
    assert await snapshot(own_db) == before


async def test_usernames_that_differ_only_in_case_are_refused_by_row_id(own_db: str) -> None:
    accounts = await write_go_database(
        own_db, [*ACCOUNTS, GoAccount("Alice", "pw-Alice-123"), GoAccount("c" * 40, "x")]
    )
    source = await PgGoSource.open(own_db)
    try:
        adoption = GoAdoption(source, await open_go_keys(source, GoSettings()))
        with pytest.raises(AdoptRefused) as refused:
            await adoption.check()
    finally:
        await source.close()
    message = str(refused.value)
    assert f"rows {accounts[0].id}, {accounts[2].id} have usernames that differ only in case" in message
    assert f"row {accounts[3].id} has a username longer than 32 characters" in message
    assert "alice" not in message.lower().replace("differ only in case", "")


async def test_only_the_go_service_database_is_adopted(own_db: str) -> None:
    await migrate_up(own_db, steps=3)
    with pytest.raises(AdoptRefused, match=r"not a database migrated by the Go service .*version 3"):
        await PgGoSource.open(own_db)


async def test_an_unfinished_adoption_is_refused_by_migrate_up_and_start_up(own_db: str) -> None:
    await write_go_database(own_db, ACCOUNTS)
    source = await PgGoSource.open(own_db)
    try:
        adoption = GoAdoption(source, await open_go_keys(source, GoSettings()))
        assert await adoption.check() == 2
        await adoption.convert()
        assert await source.stage() == Stage.MOVING
        assert await adoption.convert() > 0  # converting again changes nothing
    finally:
        await source.close()
    with pytest.raises(AdoptionUnfinished, match="run `migrate adopt` again"):
        await migrate_up(own_db)
    with pytest.raises(AdoptionUnfinished):
        await verify_schema(own_db)
