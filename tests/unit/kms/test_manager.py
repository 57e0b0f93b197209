"""KMSManager over in-memory storage: start-up checks, rotation triggers, listing, maintenance, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from internal.biz.errors import InvalidArgument, NotFound
from internal.biz.pii import FieldCipher
from internal.pkg.kms.manager import KMSManager, MaintenanceProgress, RootKeyMismatch
from internal.pkg.kms.storage import KeyStatus
from internal.pkg.kms.storage_memory import MemoryKeyStorage
from internal.pkg.kms.targets import ReencryptBatch
from tests.unit.kms.conftest import SEED, CountingStorage, until


def active_version(storage: MemoryKeyStorage) -> int:
    active = storage._set.active()
    return active.version if active else 0


async def test_first_start_creates_key_one_and_restart_reuses_it(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    first = make_manager(storage)
    await first.initialize()
    sealed = await first.crypto.encrypt("f", b"v", {})
    await first.close()
    second = make_manager(storage)
    await second.initialize()
    try:
        assert (await second.active_key()).version == 1
        assert await second.crypto.decrypt("f", sealed.ciphertext, {}) == b"v"
        assert len(await storage.all_keys()) == 1
    finally:
        await second.close()


async def test_wrong_seed_refuses_to_start(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    good = make_manager(storage)
    await good.initialize()
    await good.rotate("two keys")
    await good.close()
    bad = make_manager(storage, seed=SEED + "-wrong")
    with pytest.raises(
        RootKeyMismatch, match=r"root key does not match stored data keys \(wrong kms.seed/kms.salt\?\)"
    ):
        await bad.initialize()
    assert not bad.initialized
    assert len(await storage.all_keys()) == 2  # nothing was created over the unreadable keys


async def test_steady_state_encrypt_makes_no_storage_calls(make_manager: Callable[..., KMSManager]) -> None:
    storage = CountingStorage(MemoryKeyStorage())
    m = make_manager(storage, cache_recheck_interval=timedelta(seconds=60))
    await m.initialize()
    try:
        await m.crypto.encrypt("f", b"warm-up", {})
        storage.calls.clear()
        for i in range(1000):
            await m.crypto.encrypt("f", b"value", {"i": str(i)})
        await m.crypto.encrypt_batch([])
        assert storage.calls == []
        assert (await m.status()).active_encryption_count == 1001
    finally:
        await m.close()
    assert "add_encryption_counts" in storage.calls  # flushed at shutdown


async def test_encryption_threshold_rotates(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    m = make_manager(storage, rotate_after_encryptions=5, cache_recheck_interval=timedelta(seconds=30))
    await m.initialize()
    try:
        for _ in range(5):
            await m.crypto.encrypt("f", b"v", {})
        await until(lambda: active_version(storage) == 2)
        v1 = await storage.get_by_version(1)
        assert v1 is not None and v1.encryption_count == 5 and v1.status is KeyStatus.INACTIVE
        assert (await m.crypto.encrypt("f", b"v", {})).key_version == 2
    finally:
        await m.close()


async def test_expired_active_key_never_stops_encryption(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    m = make_manager(storage, cache_recheck_interval=timedelta(seconds=30))
    await m.initialize()
    try:
        await storage.update_expires(1, datetime.now(UTC) - timedelta(seconds=1))
        m.clear_cache()  # the cache now holds the expired record
        sealed = await m.crypto.encrypt("f", b"v", {})  # still works with key 1 ...
        assert sealed.key_version == 1
        await m.crypto.encrypt("f", b"v", {})  # ... and wakes the background rotation
        await until(lambda: active_version(storage) == 2)
        assert (await m.crypto.encrypt("f", b"v", {})).key_version == 2
        assert await m.crypto.decrypt("f", sealed.ciphertext, {}) == b"v"
    finally:
        await m.close()


async def test_expired_active_key_at_start_is_rotated(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    m = make_manager(storage)
    await m.initialize()
    await m.close()
    await storage.update_expires(1, datetime.now(UTC) - timedelta(seconds=1))
    m = make_manager(storage)
    await m.initialize()
    try:
        assert (await m.active_key()).version == 2
    finally:
        await m.close()


async def test_rotate_interval_rotates(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    m = make_manager(storage, rotate_interval=timedelta(seconds=0.3))
    await m.initialize()
    try:
        await until(lambda: active_version(storage) >= 2)
    finally:
        await m.close()


async def test_list_keys_pages_and_filters(manager: KMSManager) -> None:
    for _ in range(6):
        await manager.rotate("listing")
    first = await manager.list_keys(page_size=3)
    assert [k.version for k in first.keys] == [7, 6, 5] and first.next_page_token == "5"
    second = await manager.list_keys(page_size=3, page_token=first.next_page_token)
    third = await manager.list_keys(page_size=3, page_token=second.next_page_token)
    assert [k.version for k in second.keys + third.keys] == [4, 3, 2, 1] and third.next_page_token == ""
    active = await manager.list_keys(status="active")
    assert [k.version for k in active.keys] == [7]
    assert [k.version for k in (await manager.list_keys(status="inactive", page_size=100)).keys] == [6, 5, 4, 3, 2, 1]
    for bad in ({"page_token": "x"}, {"page_token": "-1"}, {"status": "bogus"}):
        with pytest.raises(InvalidArgument) as exc:
            await manager.list_keys(**bad)  # type: ignore[arg-type]
        assert exc.value.reason == "VALIDATION_ERROR"
    assert (await manager.key_by_version(3)).status == "inactive"
    with pytest.raises(NotFound):
        await manager.key_by_version(99)
    with pytest.raises(InvalidArgument):
        await manager.key_by_version(0)
    status = await manager.status()
    assert status.initialized and status.active_version == 7 and status.counts["inactive"] == 6
    assert status.storage_type == "memory"


class FakeTarget:
    """Stores ciphertexts in a dict; behaves like UserPiiReencryptor."""

    name = "fake"

    def __init__(self) -> None:
        self.rows: dict[int, tuple[bytes, int]] = {}

    async def pending(self, active_version: int) -> int:
        return sum(v < active_version for _, v in self.rows.values())

    async def reencrypt_batch(
        self, cipher: FieldCipher, active_version: int, cursor: str | None, limit: int
    ) -> ReencryptBatch:
        after = int(cursor) if cursor is not None else -1
        ids = sorted(i for i, (_, v) in self.rows.items() if i > after and v < active_version)[:limit]
        for i in ids:
            plaintext = await cipher.decrypt("f", self.rows[i][0], {"id": str(i)})
            sealed = await cipher.encrypt("f", plaintext, {"id": str(i)})
            self.rows[i] = (sealed.ciphertext, sealed.key_version)
        return ReencryptBatch(len(ids), len(ids), 0, 0, str(ids[-1]) if len(ids) == limit else None)

    async def versions_in_use(self) -> set[int]:
        return {v for _, v in self.rows.values()}


async def test_maintenance_reencrypts_then_destroys(make_manager: Callable[..., KMSManager]) -> None:
    storage = MemoryKeyStorage()
    target = FakeTarget()
    m = make_manager(storage)
    m.targets.append(target)
    m._destroy_grace = timedelta(0)
    await m.initialize()
    try:
        for i in range(10):
            sealed = await m.crypto.encrypt("f", f"value-{i}".encode(), {"id": str(i)})
            target.rows[i] = (sealed.ciphertext, sealed.key_version)
        await m.rotate("before maintenance")
        await storage.update_expires(1, datetime.now(UTC) - timedelta(seconds=1))
        dry = await m.maintenance(dry_run=True)
        assert (dry.expired_marked, dry.records_reencrypted, dry.keys_destroyed, dry.remaining) == (1, 0, 0, 10)
        assert (await storage.get_by_version(1)).status is KeyStatus.INACTIVE  # type: ignore[union-attr]
        seen: list[MaintenanceProgress] = []
        report = await m.maintenance(batch_size=4, progress=seen.append)
        assert (report.expired_marked, report.records_reencrypted, report.remaining, report.keys_destroyed) == (
            1,
            4,
            6,
            0,
        )
        assert not report.done and seen[-1].reencrypted == 4
        report = await m.maintenance(batch_size=100)
        assert (report.records_reencrypted, report.remaining, report.keys_destroyed, report.done) == (6, 0, 1, True)
        v1 = await storage.get_by_version(1)
        assert v1 is not None and v1.status is KeyStatus.REVOKED and v1.wrapped_key is None
        for i, (ciphertext, version) in target.rows.items():
            assert version == 2
            assert await m.crypto.decrypt("f", ciphertext, {"id": str(i)}) == f"value-{i}".encode()
    finally:
        await m.close()


async def test_close_drops_key_material(manager: KMSManager) -> None:
    root = manager._root
    await manager.crypto.encrypt("f", b"v", {})
    await manager.close()
    assert manager._keys == {} and manager._active is None and manager._root is None
    assert root is not None and root.wiped


async def test_storage_outage_neither_stops_encryption_nor_hammers_storage(
    make_manager: Callable[..., KMSManager],
) -> None:
    from internal.biz.errors import Unavailable

    storage = CountingStorage(MemoryKeyStorage())
    m = make_manager(storage, rotate_after_encryptions=10, cache_recheck_interval=timedelta(seconds=0.2))
    await m.initialize()
    try:

        async def down(*_: object, **__: object) -> None:
            storage.calls.append("down")
            raise Unavailable("SERVICE_UNAVAILABLE", "storage down")

        storage.inner.get_active = down  # type: ignore[method-assign]
        storage.inner.add_encryption_counts = down  # type: ignore[method-assign]
        storage.calls.clear()
        for _ in range(300):  # far past the rotation threshold: every call wakes the background task
            assert (await m.crypto.encrypt("f", b"v", {})).key_version == 1
            await asyncio.sleep(0.001)
        assert storage.calls.count("down") <= 8, storage.calls
    finally:
        await m.close()
