"""Cross-replica cache invalidation: the periodic re-check bound, pub/sub, reconnects, no per-call I/O."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from internal.pkg.kms.events import RedisKeyEvents
from internal.pkg.kms.manager import KMSManager
from internal.pkg.kms.storage_pg import PgKeyStorage
from tests.integration.kms.conftest import MakeManager
from tests.unit.kms.conftest import CountingStorage


async def seconds_until_version(manager: KMSManager, version: int, within: float) -> float:
    """Encrypt on ``manager`` until it uses ``version``; returns how long that took."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while (await manager.crypto.encrypt("f", b"v", {})).key_version != version:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_recheck_bounds_staleness_without_pubsub(make_manager: MakeManager) -> None:
    interval = 0.3
    a = await make_manager(cache_recheck_interval=timedelta(seconds=interval))
    b = await make_manager(cache_recheck_interval=timedelta(seconds=interval))
    for round_ in range(3):
        assert (await b.crypto.encrypt("f", b"v", {})).key_version == round_ + 1
        await a.rotate("invalidate")
        elapsed = await seconds_until_version(b, round_ + 2, within=interval + 1.0)
        assert elapsed <= interval + 0.2, elapsed


async def test_pubsub_is_near_immediate(make_manager: MakeManager) -> None:
    a = await make_manager(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    b = await make_manager(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    timings = []
    for round_ in range(5):
        assert (await b.crypto.encrypt("f", b"v", {})).key_version == round_ + 1
        await a.rotate("invalidate")
        timings.append(await seconds_until_version(b, round_ + 2, within=2.0))
    assert max(timings) < 0.25, timings


async def test_lost_pubsub_connection_resyncs(make_manager: MakeManager) -> None:
    a = await make_manager(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    b = await make_manager(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    assert isinstance(b.events, RedisKeyEvents)
    await b.events._pubsub.connection.disconnect()  # the rotation message below never reaches b
    await a.rotate("while b is disconnected")
    assert await seconds_until_version(b, 2, within=3.0) < 2.0


async def test_steady_state_encrypt_does_no_io(
    make_manager: MakeManager, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = CountingStorage(PgKeyStorage(db))
    manager = await make_manager(storage=storage, pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    assert isinstance(manager.events, RedisKeyEvents)
    redis_commands: list[Any] = []
    client = manager.events._redis
    real = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        redis_commands.append(args[0])
        return await real(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    await manager.crypto.encrypt("f", b"warm-up", {})
    storage.calls.clear()
    for i in range(2000):
        await manager.crypto.encrypt("email", b"alice@example.com", {"user_id": str(i)})
    assert storage.calls == [] and redis_commands == []
    # Counted in memory only; the background task flushes them.
    assert (await manager.status()).active_encryption_count == 2001


async def test_ciphertext_under_a_newer_key_decrypts_and_wakes_the_replica(make_manager: MakeManager) -> None:
    a = await make_manager(cache_recheck_interval=timedelta(seconds=30))
    b = await make_manager(cache_recheck_interval=timedelta(seconds=30))
    await a.rotate("newer")
    sealed = await a.crypto.encrypt("f", b"from a", {})
    assert await b.crypto.decrypt("f", sealed.ciphertext, {}) == b"from a"
    # b learned that a newer key exists and re-checked at once instead of waiting 30 s.
    assert await seconds_until_version(b, 2, within=1.0) < 0.5
