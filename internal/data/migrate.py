"""Schema migrations compatible with golang-migrate.

Files are ``migrations/NNNNNN_name.up.sql`` / ``.down.sql`` and the state is golang-migrate's single-row
``schema_migrations(version, dirty)`` table, so the golang-migrate CLI and this runner agree. Each step
runs in one transaction together with its version bump, so a crash never leaves a half-applied step;
an advisory lock serializes concurrent runners (several replicas starting at once).

A version number alone does not say whose schema it is: the Go service this one replaces also keeps
golang-migrate's table (its versions 1 and 2), with other tables. So before applying anything, and at
start-up, the tables are compared with what our migrations make at that version (built once per process
in a scratch schema that is rolled back). The Go service's database is recognised and sent to
``migrate adopt``; any other difference is refused with a message naming it (docs/operations.md
"Moving from the Go service").
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from internal.data.data import PoolerConnection

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_FILE = re.compile(r"^(\d+)_(\w+)\.(up|down)\.sql$")
# Arbitrary constant shared by every replica of this service (and `migrate adopt`).
LOCK_KEY = _LOCK_KEY = 0x6B6D_7331


log = logging.getLogger(__name__)
# Where `migrate adopt` keeps the Go service's tables while it moves their rows (internal/data/adopt.py).
ADOPT_SCHEMA = "authkms_adopt"
# The Go service's tables after its migrations 000001_init_schema and 000002_create_kms_data_keys.
GO_SERVICE_TABLES: dict[str, frozenset[str]] = {
    "users": frozenset(
        [
            "id",
            "username",
            "password",
            "email_encrypted",
            "email_hash",
            "phone_encrypted",
            "phone_hash",
            "name_encrypted",
            "name_hash",
            "created_at",
            "updated_at",
        ]
    ),
    "kms_data_keys": frozenset(
        [
            "id",
            "version",
            "algorithm",
            "encrypted_key",
            "key_hash",
            "status",
            "created_at",
            "updated_at",
            "expires_at",
            "metadata",
        ]
    ),
}
GO_SERVICE_VERSIONS = (1, 2)
_MAX_DIFFERENCES = 12

# (table, column) -> type as format_type() spells it, for one schema's ordinary tables.
Shape = dict[str, dict[str, str]]
_SHAPES: dict[tuple[str, int], Shape] = {}


class MigrationError(Exception):
    pass


class GoServiceDatabase(MigrationError):
    """The database was migrated by the Go service: ``migrate adopt`` converts it in place."""


class AdoptionUnfinished(MigrationError):
    """``migrate adopt`` started on this database and has not finished."""


class ForeignSchema(MigrationError):
    """schema_migrations holds one of our versions, but the tables are not ours."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: Path
    down: Path | None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    ups: dict[int, Path] = {}
    downs: dict[int, Path] = {}
    for path in directory.iterdir():
        match = _FILE.match(path.name)
        if match:
            (ups if match[3] == "up" else downs)[int(match[1])] = path
    return [
        Migration(v, _FILE.match(p.name)[2], p, downs.get(v))  # type: ignore[index]
        for v, p in sorted(ups.items())
    ]


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
    )


async def current_version(conn: asyncpg.Connection) -> tuple[int | None, bool]:
    """(version, dirty); version is None when nothing was applied."""
    await _ensure_table(conn)
    row = await conn.fetchrow("SELECT version, dirty FROM schema_migrations LIMIT 1")
    return (None, False) if row is None else (int(row["version"]), bool(row["dirty"]))


async def _set_version(conn: asyncpg.Connection, version: int | None) -> None:
    await conn.execute("DELETE FROM schema_migrations")
    if version is not None:
        await conn.execute("INSERT INTO schema_migrations (version, dirty) VALUES ($1, false)", version)


async def _locked_state(conn: asyncpg.Connection) -> int | None:
    version, dirty = await current_version(conn)
    if dirty:
        raise MigrationError(
            f"schema_migrations is dirty at version {version}: a previous run failed midway; "
            "fix the schema by hand, then force the version (golang-migrate force)"
        )
    return version


async def shape(conn: asyncpg.Connection, schema: str) -> Shape:
    rows = await conn.fetch(
        """
        SELECT c.relname AS t, a.attname AS c, format_type(a.atttypid, a.atttypmod) AS type
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
           AND c.relname <> 'schema_migrations'
        """,
        schema,
    )
    tables: Shape = {}
    for row in rows:
        tables.setdefault(row["t"], {})[row["c"]] = row["type"]
    return tables


async def expected_shape(conn: asyncpg.Connection, directory: Path, version: int) -> Shape:
    """The tables our migrations up to ``version`` make: applied in a scratch schema, then rolled back."""
    cached = _SHAPES.get((str(directory), version))
    if cached is not None:
        return cached
    scratch = f"authkms_shape_{uuid.uuid4().hex[:12]}"
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f'CREATE SCHEMA "{scratch}"')
        await conn.execute(f'SET LOCAL search_path TO "{scratch}"')
        for migration in discover(directory):
            if migration.version <= version:
                await conn.execute(migration.up.read_text())
        result = await shape(conn, scratch)
    finally:
        await transaction.rollback()
    _SHAPES[(str(directory), version)] = result
    return result


def differences(expected: Shape, actual: Shape) -> list[str]:
    """What differs between two shapes, table by table (only the tables ``expected`` has).

    Columns added to one of our tables (an operator's reporting column) are no difference by themselves; they
    are named only beside a real one, to help recognise whose table it is."""
    found: list[str] = []
    for table, columns in sorted(expected.items()):
        have = actual.get(table)
        if have is None:
            found.append(f"table {table} is missing")
            continue
        missing = sorted(set(columns) - set(have))
        extra = sorted(set(have) - set(columns))
        retyped = [
            f"{c} is {have[c]}, not {columns[c]}" for c in sorted(set(columns) & set(have)) if have[c] != columns[c]
        ]
        if missing:
            found.append(f"{table} lacks column(s) {', '.join(missing)}")
        if retyped:
            found.append(f"{table}: {'; '.join(retyped)}")
        if extra and (missing or retyped):
            found.append(f"{table} has column(s) {', '.join(extra)} that ours does not")
    return found


def _listed(items: list[str]) -> str:
    shown = items[:_MAX_DIFFERENCES]
    return "; ".join(shown) + (f"; and {len(items) - len(shown)} more" if len(items) > len(shown) else "")


def is_go_service_shape(actual: Shape, version: int | None) -> bool:
    """Version 1 or 2 with the Go service's users table (and at 2 its kms_data_keys)."""
    if version not in GO_SERVICE_VERSIONS:
        return False
    wanted = ["users"] + (["kms_data_keys"] if version == 2 else [])
    return all(set(actual.get(t, {})) == GO_SERVICE_TABLES[t] for t in wanted)


async def _current_schema(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT current_schema()"))


async def adoption_unfinished(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", ADOPT_SCHEMA))


async def check_schema(conn: asyncpg.Connection, version: int | None, directory: Path = MIGRATIONS_DIR) -> None:
    """Refuse a database whose tables are not the ones our migrations made at ``version``.

    GoServiceDatabase for the Go service's, AdoptionUnfinished while ``migrate adopt`` is half done,
    ForeignSchema (naming what differs) for anything else at a version we know. Versions we do not know
    (a newer release's) are left alone."""
    if await adoption_unfinished(conn):
        raise AdoptionUnfinished(
            "`migrate adopt` has not finished converting this database from the Go service "
            f"(schema {ADOPT_SCHEMA} still holds rows to move): run `migrate adopt` again to finish"
        )
    if version is None:
        return
    known = [m.version for m in discover(directory)]
    actual = await shape(conn, await _current_schema(conn))
    if is_go_service_shape(actual, version):
        raise GoServiceDatabase(
            f"this database was migrated by the Go service (schema_migrations version {version}, its users"
            f"{' and kms_data_keys' if version == 2 else ''} tables): nothing was applied; convert it in place "
            'with `migrate adopt` (docs/operations.md "Moving from the Go service")'
        )
    if version not in known:
        return
    try:
        now = await expected_shape(conn, directory, version)
        later = await expected_shape(conn, directory, known[-1])
    except asyncpg.InsufficientPrivilegeError:
        log.warning("schema check skipped: no privilege to create a scratch schema")
        return
    found = differences(now, actual)
    # Tables our later migrations create must not exist yet (they would be someone else's).
    found += [
        f"table {t} exists but our later migrations create it" for t in sorted(set(later) - set(now)) if t in actual
    ]
    if found:
        raise ForeignSchema(
            f"schema_migrations says version {version}, but the tables are not the ones our migrations make at "
            f"that version: {_listed(found)}; refusing to apply our migrations on top of another schema"
        )


async def verify_schema(dsn: str, directory: Path = MIGRATIONS_DIR) -> None:
    """At start-up without auto_migrate: the same refusal as ``migrate up``."""
    # Read-only, so it may go through a transaction pooler: no statement names that could collide.
    conn = await asyncpg.connect(dsn, statement_cache_size=0, connection_class=PoolerConnection)
    try:
        version, _ = await current_version(conn)
        await check_schema(conn, version, directory)
    finally:
        await conn.close()


async def apply_all_in(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> int:
    """Every migration, in the caller's transaction, then golang-migrate's version: ``migrate adopt``'s
    schema step (one transaction for the whole conversion). Returns the version reached."""
    migrations = discover(directory)
    for migration in migrations:
        try:
            await conn.execute(migration.up.read_text())
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{migration.up.name}: {exc}") from exc
    await _ensure_table(conn)
    await _set_version(conn, migrations[-1].version)
    return migrations[-1].version


async def migrate_up(dsn: str, directory: Path = MIGRATIONS_DIR, steps: int | None = None) -> list[int]:
    """Apply pending migrations (all, or ``steps`` of them). Returns the versions applied."""
    applied: list[int] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        current = await _locked_state(conn)
        await check_schema(conn, current, directory)
        pending = [m for m in discover(directory) if current is None or m.version > current]
        for migration in pending[:steps]:
            async with conn.transaction():
                try:
                    await conn.execute(migration.up.read_text())
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{migration.up.name}: {exc}") from exc
                await _set_version(conn, migration.version)
            applied.append(migration.version)
    finally:
        await conn.close()
    return applied


async def migrate_down(dsn: str, directory: Path = MIGRATIONS_DIR, steps: int = 1) -> list[int]:
    """Revert the last ``steps`` migrations. Returns the versions reverted."""
    reverted: list[int] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        current = await _locked_state(conn)
        await check_schema(conn, current, directory)  # our down files would drop someone else's tables
        known = discover(directory)
        for _ in range(steps):
            index = next((i for i, m in enumerate(known) if m.version == current), None)
            if index is None:
                break
            migration = known[index]
            if migration.down is None:
                raise MigrationError(f"migration {migration.version} has no .down.sql file")
            async with conn.transaction():
                await conn.execute(migration.down.read_text())
                current = known[index - 1].version if index > 0 else None
                await _set_version(conn, current)
            reverted.append(migration.version)
    finally:
        await conn.close()
    return reverted


async def schema_version(dsn: str) -> tuple[int | None, bool]:
    conn = await asyncpg.connect(dsn, statement_cache_size=0, connection_class=PoolerConnection)
    try:
        return await current_version(conn)
    finally:
        await conn.close()
