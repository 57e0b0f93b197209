"""KMS integration fixtures: a dedicated, freshly migrated database per test module.

The session-wide ``database_url`` is shared with other test files; key rotation tests need a key table
nobody else touches, so each KMS module gets its own database and each test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from internal.conf.config import Kms
from internal.data.kms_reencrypt import UserPiiReencryptor
from internal.data.migrate import migrate_up
from internal.pkg.kms.audit_pg import PgAuditSink
from internal.pkg.kms.events import KeyEvents, NoopKeyEvents, RedisKeyEvents, channel_name
from internal.pkg.kms.manager import KMSManager
from internal.pkg.kms.storage import KeyStorage
from internal.pkg.kms.storage_pg import PgKeyStorage

SEED = "integration-test-seed-0123456789"
SALT = "integration-salt"


def kms_config(**overrides: Any) -> Kms:
    values: dict[str, Any] = {"iterations": 10_000, "cache_recheck_interval": timedelta(seconds=0.3)}
    values.update(overrides)
    return Kms(**values)


async def eventually(read: Callable[[], Awaitable[Any]], expected: Any, within: float = 3.0) -> None:
    """Poll ``read()`` until it returns ``expected`` (state changed by background tasks or other processes)."""
    value: Any = None
    try:
        async with asyncio.timeout(within):
            while (value := await read()) != expected:  # noqa: ASYNC110 - state owned by another task
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"still {value!r} after {within}s, expected {expected!r}") from None


@pytest.fixture(scope="module")
async def kms_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"test_kms_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(postgres_server_url)._replace(path="/" + name))
    await migrate_up(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(postgres_server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def kms_pool(kms_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(kms_database_url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def db(kms_pool: asyncpg.Pool) -> asyncpg.Pool:
    """The module's pool, with empty key, users and audit tables."""
    await kms_pool.execute("TRUNCATE kms_data_keys, users, audit_events RESTART IDENTITY CASCADE")
    return kms_pool


MakeManager = Callable[..., Awaitable[KMSManager]]


@pytest.fixture
async def make_manager(db: asyncpg.Pool, redis_url: str, redis_prefix: str) -> AsyncIterator[MakeManager]:
    """Builds and initializes managers on the module database; closes them (and their Redis) afterwards."""
    managers: list[KMSManager] = []
    clients: list[aioredis.Redis] = []

    async def make(
        *,
        seed: str = SEED,
        pubsub: bool = False,
        storage: KeyStorage | None = None,
        targets: bool = True,
        destroy_grace: timedelta | None = None,
        initialize: bool = True,
        **overrides: Any,
    ) -> KMSManager:
        events: KeyEvents = NoopKeyEvents()
        if pubsub:
            client = aioredis.from_url(redis_url)
            clients.append(client)
            events = RedisKeyEvents(client, channel_name(redis_prefix))
        manager = KMSManager(
            kms_config(**overrides),
            storage or PgKeyStorage(db),
            seed=seed,
            salt=SALT,
            events=events,
            audit_sink=PgAuditSink(db),
            targets=[UserPiiReencryptor(db)] if targets else [],
            destroy_grace=destroy_grace,
        )
        managers.append(manager)
        if initialize:
            await manager.initialize()
        return manager

    try:
        yield make
    finally:
        for manager in managers:
            await manager.close()
        for client in clients:
            await client.aclose()
