"""The Go service's tables as ``migrate adopt`` reads and retires them (implements ``internal.biz.adopt.GoSource``).

One connection for the whole run, holding the migrations' advisory lock, so no ``migrate up``, server start-up
migration or second adopt runs meanwhile. ``convert_schema`` is one transaction: the Go ``users`` and
``kms_data_keys`` move (with their indexes and sequence) into the side schema ``authkms_adopt``, our migrations
create our tables, and golang-migrate's ``schema_migrations`` gets our latest version. Each ``move`` is one
transaction that inserts the adopted rows and deletes them from the side table, so a killed run leaves every
user in exactly one of the two tables. The side schema existing is what tells the server, ``migrate up`` and a
resumed adopt that the conversion is unfinished (``internal.data.migrate.check_schema``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from internal.biz import pii
from internal.biz.adopt import AdoptedUser, AdoptRefused, GoKeyRow, GoUser, MoveOutcome, Stage
from internal.data import migrate

SIDE = migrate.ADOPT_SCHEMA
_MAX_USERNAME = 32  # our users.username is VARCHAR(32)
_INSERT = """
    INSERT INTO users (id, username, password, email_encrypted, email_hash, phone_encrypted, phone_hash,
                       name_encrypted, name_hash, pii_key_version, created_at, updated_at)
    VALUES ($1, $2, $3, $4,
            CASE WHEN NOT EXISTS (SELECT 1 FROM users WHERE email_hash = $5) THEN $5 END,
            $6,
            CASE WHEN NOT EXISTS (SELECT 1 FROM users WHERE phone_hash = $7) THEN $7 END,
            $8, $9, $10, COALESCE($11::timestamp::timestamptz, now()), COALESCE($12::timestamp::timestamptz, now()))
"""


class PgGoSource:
    def __init__(self, conn: asyncpg.Connection, directory: Any = migrate.MIGRATIONS_DIR) -> None:
        self._conn = conn
        self._directory = directory
        self._home = "public"
        self._where = "public"  # schema that holds the Go users table now

    @classmethod
    async def open(cls, dsn: str) -> PgGoSource:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", migrate.LOCK_KEY)
            source = cls(conn)
            source._home = str(await conn.fetchval("SELECT current_schema()"))
            await source.stage()
        except BaseException:
            await conn.close()
            raise
        return source

    async def close(self) -> None:
        await self._conn.close()  # also releases the advisory lock

    async def stage(self) -> str:
        if await migrate.adoption_unfinished(self._conn):
            self._where = SIDE
            return Stage.MOVING
        version, dirty = await migrate.current_version(self._conn)
        if not dirty and migrate.is_go_service_shape(await migrate.shape(self._conn, self._home), version):
            self._where = self._home
            return Stage.GO
        known = [m.version for m in migrate.discover(self._directory)]
        if version == known[-1] and not dirty:
            await migrate.check_schema(self._conn, version, self._directory)
            return Stage.DONE
        raise AdoptRefused(
            f"this is not a database migrated by the Go service (schema_migrations version {version}"
            f"{', dirty' if dirty else ''}; the Go service leaves version 1 or 2 with its users and kms_data_keys "
            "tables); nothing was changed",
        )

    async def _has_table(self, schema: str, table: str) -> bool:
        return bool(await self._conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}"."{table}"'))

    async def go_keys(self) -> list[GoKeyRow]:
        if not await self._has_table(self._where, "kms_data_keys"):
            return []
        rows = await self._conn.fetch(
            f'SELECT id, version, encrypted_key, metadata FROM "{self._where}".kms_data_keys ORDER BY version, id'
        )
        keys = []
        for row in rows:
            metadata = row["metadata"]
            parsed = json.loads(metadata) if isinstance(metadata, str) else {}
            keys.append(
                GoKeyRow(
                    str(row["id"]),
                    int(row["version"]),
                    bytes(row["encrypted_key"]),
                    parsed if isinstance(parsed, dict) else {},
                )
            )
        return keys

    async def username_problems(self) -> list[str]:
        table = f'"{self._where}".users'
        long = await self._conn.fetch(f"SELECT id FROM {table} WHERE length(username) > $1 ORDER BY id", _MAX_USERNAME)
        twins = await self._conn.fetch(
            f"SELECT array_agg(id ORDER BY id) AS ids FROM {table} GROUP BY lower(username) HAVING count(*) > 1"
        )
        problems = [f"row {r['id']} has a username longer than {_MAX_USERNAME} characters" for r in long]
        problems += [
            f"rows {', '.join(map(str, r['ids']))} have usernames that differ only in case (ours are case-insensitive)"
            for r in twins
        ]
        return problems

    async def convert_schema(self) -> int:
        if self._where == SIDE:
            version, _ = await migrate.current_version(self._conn)
            return int(version or 0)
        home = f'"{self._home}"'
        async with self._conn.transaction():
            await self._conn.execute(f'CREATE SCHEMA "{SIDE}"')
            await self._conn.execute(f'ALTER TABLE {home}.users SET SCHEMA "{SIDE}"')
            if await self._has_table(self._home, "kms_data_keys"):
                await self._conn.execute(f"DROP VIEW IF EXISTS {home}.kms_key_stats")
                await self._conn.execute(f'ALTER TABLE {home}.kms_data_keys SET SCHEMA "{SIDE}"')
            await self._conn.execute("DELETE FROM schema_migrations")
            version = await migrate.apply_all_in(self._conn, self._directory)
            # New registrations continue after the Go service's ids.
            await self._conn.execute(
                f"SELECT setval('users_id_seq', m) FROM (SELECT max(id) AS m FROM \"{SIDE}\".users) t"
                " WHERE m IS NOT NULL"
            )
        self._where = SIDE
        return version

    async def pending_count(self) -> int:
        return int(await self._conn.fetchval(f'SELECT count(*) FROM "{self._where}".users'))

    async def pending(self, after_id: int, limit: int) -> list[GoUser]:
        rows = await self._conn.fetch(
            f"""
            SELECT id, username, password, email_encrypted, phone_encrypted, name_encrypted, created_at, updated_at
              FROM "{self._where}".users WHERE id > $1 ORDER BY id LIMIT $2
            """,
            after_id,
            limit,
        )
        return [
            GoUser(
                int(r["id"]),
                r["username"],
                r["password"],
                {
                    field: bytes(r[f"{field}_encrypted"]) if r[f"{field}_encrypted"] is not None else None
                    for field in (pii.EMAIL, pii.PHONE, pii.NAME)
                },
                r["created_at"],
                r["updated_at"],
            )
            for r in rows
        ]

    async def move(self, users: Sequence[AdoptedUser]) -> MoveOutcome:
        if self._where != SIDE:
            raise AdoptRefused("the schema has not been converted yet")
        ids = [u.id for u in users]
        offered = sum(u.hashes.get(f) is not None for u in users for f in (pii.EMAIL, pii.PHONE))
        async with self._conn.transaction():
            # Pipelined, yet row after row: of two Go rows with the same address, the older keeps the blind index.
            await self._conn.executemany(
                _INSERT,
                [
                    (
                        u.id,
                        u.username,
                        u.password_hash,
                        u.values.get(pii.EMAIL),
                        u.hashes.get(pii.EMAIL),
                        u.values.get(pii.PHONE),
                        u.hashes.get(pii.PHONE),
                        u.values.get(pii.NAME),
                        u.hashes.get(pii.NAME),
                        u.key_version,
                        u.created_at,
                        u.updated_at,
                    )
                    for u in users
                ],
            )
            kept = await self._conn.fetchval(
                "SELECT count(email_hash) + count(phone_hash) FROM users WHERE id = ANY($1::int8[])", ids
            )
            status = await self._conn.execute(f'DELETE FROM "{SIDE}".users WHERE id = ANY($1::int8[])', ids)
        unindexed = offered - int(kept)
        return MoveOutcome(int(status.split()[-1]), unindexed)

    async def finish(self) -> bool:
        async with self._conn.transaction():
            if await self._has_table(SIDE, "users"):
                left = await self._conn.fetchval(f'SELECT count(*) FROM "{SIDE}".users')
                if left:
                    return False
            await self._conn.execute(f'DROP SCHEMA IF EXISTS "{SIDE}" CASCADE')
            # The Go service's trigger function, left behind in the home schema by its migration 000002.
            await self._conn.execute(f'DROP FUNCTION IF EXISTS "{self._home}".update_kms_data_keys_updated_at()')
        self._where = self._home
        return True
