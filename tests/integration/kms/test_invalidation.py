"""Cross-replica cache invalidation: the periodic re-check bound, pub/sub, reconnects, no per-call I/O; for
rotations, new keys, policy updates and scheduled or cancelled destructions alike."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from internal.biz.errors import FailedPrecondition
from internal.biz.kms import DEFAULT_KEY
from internal.data.kms import PgKeyRepo
from internal.data.kms_events import RedisKeyEvents
from tests.integration.kms.conftest import MakeKms
from tests.unit.kms.stack import CountingRepo, KmsStack


async def seconds_until_version(kms: KmsStack, version: int, within: float, key_name: str = DEFAULT_KEY) -> float:
    """Encrypt on ``kms`` until it uses ``version``; returns how long that took."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while (await kms.cipher.encrypt(key_name, "f", b"v", {})).key_version != version:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    return time.monotonic() - start


async def seconds_until_refused(kms: KmsStack, key_name: str, ciphertext: bytes, within: float) -> float:
    """Decrypt on ``kms`` until it answers KEY_PENDING_DESTRUCTION; returns how long that took."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while True:
            try:
                await kms.cipher.decrypt(key_name, "f", ciphertext, {})
            except FailedPrecondition as exc:
                assert exc.reason == "KEY_PENDING_DESTRUCTION"
                return time.monotonic() - start
            await asyncio.sleep(0.005)


async def test_recheck_bounds_staleness_without_pubsub(make_kms: MakeKms) -> None:
    interval = 0.3
    a = await make_kms(cache_recheck_interval=timedelta(seconds=interval))
    b = await make_kms(cache_recheck_interval=timedelta(seconds=interval))
    for round_ in range(3):
        assert (await b.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == round_ + 1
        await a.admin.rotate(DEFAULT_KEY, "invalidate")
        elapsed = await seconds_until_version(b, round_ + 2, within=interval + 1.0)
        assert elapsed <= interval + 0.2, elapsed


async def test_pubsub_is_near_immediate(make_kms: MakeKms) -> None:
    a = await make_kms(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    b = await make_kms(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    timings = []
    for round_ in range(5):
        assert (await b.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == round_ + 1
        await a.admin.rotate(DEFAULT_KEY, "invalidate")
        timings.append(await seconds_until_version(b, round_ + 2, within=2.0))
    assert max(timings) < 0.25, timings


@pytest.mark.parametrize("pubsub", [True, False], ids=["pubsub", "recheck"])
async def test_every_key_change_reaches_the_other_replica(make_kms: MakeKms, pubsub: bool) -> None:
    interval = 30.0 if pubsub else 0.3
    bound = 0.25 if pubsub else interval + 0.2
    a = await make_kms(pubsub=pubsub, cache_recheck_interval=timedelta(seconds=interval))
    b = await make_kms(pubsub=pubsub, cache_recheck_interval=timedelta(seconds=interval))
    await a.admin.create_key("orders")
    old = await b.cipher.encrypt("orders", "f", b"old", {})  # b learns of the new key on first use
    await a.admin.rotate("orders", "invalidate")
    assert await seconds_until_version(b, 2, within=bound + 1.0, key_name="orders") <= bound
    # A policy change: b rotates on its own once the (lowered) threshold is reached.
    await a.admin.update_key("orders", rotate_after_encryptions=3)
    assert await seconds_until_version(b, 3, within=bound + 2.0, key_name="orders") <= bound + 1.0
    # A scheduled destruction: b refuses the version it had cached ...
    assert (await b.cipher.decrypt("orders", "f", old.ciphertext, {})).plaintext == b"old"
    await a.admin.schedule_destruction("orders", 1)
    assert await seconds_until_refused(b, "orders", old.ciphertext, within=bound + 1.0) <= bound
    # ... and decrypts again once it is cancelled.
    await a.admin.cancel_destruction("orders", 1)
    async with asyncio.timeout(bound + 1.0):
        while True:
            try:
                assert (await b.cipher.decrypt("orders", "f", old.ciphertext, {})).plaintext == b"old"
                break
            except FailedPrecondition:
                await asyncio.sleep(0.005)


async def test_lost_pubsub_connection_resyncs(make_kms: MakeKms) -> None:
    a = await make_kms(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    b = await make_kms(pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    assert isinstance(b.events, RedisKeyEvents)
    await b.events._pubsub.connection.disconnect()  # the rotation message below never reaches b
    await a.admin.rotate(DEFAULT_KEY, "while b is disconnected")
    assert await seconds_until_version(b, 2, within=3.0) < 2.0


async def test_steady_state_encrypt_does_no_io(
    make_kms: MakeKms, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = CountingRepo(PgKeyRepo(db))
    kms = await make_kms(repo=repo, pubsub=True, cache_recheck_interval=timedelta(seconds=30))
    await kms.admin.create_key("orders")
    assert isinstance(kms.events, RedisKeyEvents)
    redis_commands: list[Any] = []
    client = kms.events._redis
    real = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        redis_commands.append(args[0])
        return await real(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    for name in (DEFAULT_KEY, "orders"):
        await kms.cipher.encrypt(name, "f", b"warm-up", {})
    repo.calls.clear()
    for i in range(1000):
        for name in (DEFAULT_KEY, "orders"):
            await kms.cipher.encrypt(name, "email", b"alice@example.com", {"user_id": str(i)})
    assert repo.calls == [] and redis_commands == []
    # Counted in memory only; the background task flushes them.
    assert (await kms.admin.status(DEFAULT_KEY)).active_encryption_count == 1001
    assert (await kms.admin.status("orders")).active_encryption_count == 1001


async def test_ciphertext_under_a_newer_version_decrypts_and_wakes_the_replica(make_kms: MakeKms) -> None:
    a = await make_kms(cache_recheck_interval=timedelta(seconds=30))
    b = await make_kms(cache_recheck_interval=timedelta(seconds=30))
    await a.admin.rotate(DEFAULT_KEY, "newer")
    sealed = await a.cipher.encrypt(DEFAULT_KEY, "f", b"from a", {})
    assert (await b.cipher.decrypt(DEFAULT_KEY, "f", sealed.ciphertext, {})).plaintext == b"from a"
    # b learned that a newer version exists and re-checked at once instead of waiting 30 s.
    assert await seconds_until_version(b, 2, within=1.0) < 0.5
