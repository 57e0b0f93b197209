"""KMS integration fixtures: a dedicated, freshly migrated database per test module.

The session-wide ``database_url`` is shared with other test files; key rotation tests need key tables
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

from internal.biz.kms import KeyEvents, KeyRepo
from internal.data.audit import PgAuditLog
from internal.data.kms import PgKeyRepo
from internal.data.kms_events import RedisKeyEvents, channel_name
from internal.data.migrate import migrate_up
from internal.data.users_pii import PgUsersPiiStore
from tests.unit.kms.stack import FakeClock, KmsStack, build_kms, kms_config

SEED = "integration-test-seed-0123456789"
SALT = "integration-salt"


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
    """The module's pool, with empty key, users and audit tables (no named key at all, not even `default`)."""
    await kms_pool.execute("TRUNCATE kms_keys, kms_data_keys, users, audit_events RESTART IDENTITY CASCADE")
    return kms_pool


MakeKms = Callable[..., Awaitable[KmsStack]]


@pytest.fixture
async def make_kms(db: asyncpg.Pool, redis_url: str, redis_prefix: str) -> AsyncIterator[MakeKms]:
    """Builds and opens KMS stacks (replicas) on the module database; closes them (and their Redis) afterwards."""
    stacks: list[KmsStack] = []
    clients: list[aioredis.Redis] = []

    async def make(
        *,
        seed: str = SEED,
        pubsub: bool = False,
        repo: KeyRepo | None = None,
        clock: FakeClock | None = None,
        users_pii: Any = None,
        open_it: bool = True,
        **overrides: Any,
    ) -> KmsStack:
        events: KeyEvents | None = None
        if pubsub:
            client = aioredis.from_url(redis_url)
            clients.append(client)
            events = RedisKeyEvents(client, channel_name(redis_prefix))
        overrides.setdefault("cache_recheck_interval", timedelta(seconds=0.3))
        stack = build_kms(
            repo or PgKeyRepo(db),
            seed=seed,
            salt=SALT,
            config=kms_config(**overrides),
            events=events,
            audit=PgAuditLog(db),
            users_pii=users_pii or PgUsersPiiStore(db),
            clock=clock,
        )
        stacks.append(stack)
        if open_it:
            await stack.open()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            await stack.close()
        for client in clients:
            await client.aclose()
