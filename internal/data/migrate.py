"""Schema migrations compatible with golang-migrate.

Files are ``migrations/NNNNNN_name.up.sql`` / ``.down.sql`` and the state is golang-migrate's single-row
``schema_migrations(version, dirty)`` table, so the golang-migrate CLI and this runner agree. Each step
runs in one transaction together with its version bump, so a crash never leaves a half-applied step;
an advisory lock serializes concurrent runners (several replicas starting at once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_FILE = re.compile(r"^(\d+)_(\w+)\.(up|down)\.sql$")
# Arbitrary constant shared by every replica of this service.
_LOCK_KEY = 0x6B6D_7331


class MigrationError(Exception):
    pass


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


async def migrate_up(dsn: str, directory: Path = MIGRATIONS_DIR, steps: int | None = None) -> list[int]:
    """Apply pending migrations (all, or ``steps`` of them). Returns the versions applied."""
    applied: list[int] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        current = await _locked_state(conn)
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
    conn = await asyncpg.connect(dsn)
    try:
        return await current_version(conn)
    finally:
        await conn.close()
