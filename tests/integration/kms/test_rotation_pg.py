"""Rotation on PostgreSQL: nothing is lost, concurrent rotations make one key, automatic triggers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from internal.biz.pii import Sealed
from internal.pkg.kms.crypto import EncryptItem
from tests.integration.kms.conftest import MakeManager, eventually

WORKER = Path(__file__).with_name("rotate_worker.py")


async def active_version(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT version FROM kms_data_keys WHERE status = 'active'"))


async def count_of(db: asyncpg.Pool, version: int) -> int:
    return int(await db.fetchval("SELECT encryption_count FROM kms_data_keys WHERE version = $1", version))


async def test_fifty_rotations_lose_nothing(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    manager = await make_manager()
    written: list[tuple[bytes, Sealed]] = []
    for i in range(51):
        for field in ("email", "phone"):
            plaintext = f"{field}-{i}".encode()
            written.append((plaintext, await manager.crypto.encrypt(field, plaintext, {"user_id": str(i)})))
        if i < 50:
            await manager.rotate(f"rotation {i}")
    assert sorted({s.key_version for _, s in written}) == list(range(1, 52))
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys WHERE status = 'active'") == 1
    cold = await make_manager()  # a fresh process: every old key is loaded on demand
    for manager_ in (manager, cold):
        for i, (plaintext, sealed) in enumerate(written):
            field = "email" if i % 2 == 0 else "phone"
            assert await manager_.crypto.decrypt(field, sealed.ciphertext, {"user_id": str(i // 2)}) == plaintext


async def test_concurrent_rotations_in_one_process_make_one_key(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    managers = [await make_manager() for _ in range(6)]
    for round_ in range(3):
        for m in managers:
            await m.refresh()
        results = await asyncio.gather(*(m.rotate("race") for m in managers))
        assert {r.version for r in results} == {round_ + 2}
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys") == 4
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys WHERE status = 'active'") == 1


def _spawn(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )


async def test_two_processes_rotating_at_once(
    make_manager: MakeManager, db: asyncpg.Pool, kms_database_url: str
) -> None:
    workers = [_spawn(kms_database_url), _spawn(kms_database_url)]
    rounds = 5
    try:
        # Both start on an empty table at the same time: exactly one first key.
        ready = [await asyncio.to_thread(w.stdout.readline) for w in workers]  # type: ignore[union-attr]
        assert [line.split() for line in ready] == [["ready", "1"], ["ready", "1"]]
        for round_ in range(rounds):
            start_at = time.time() + 0.3
            for w in workers:
                w.stdin.write(f"go {start_at}\n")  # type: ignore[union-attr]
                w.stdin.flush()  # type: ignore[union-attr]
            replies = [await asyncio.to_thread(w.stdout.readline) for w in workers]  # type: ignore[union-attr]
            assert [line.split() for line in replies] == [["rotated", str(round_ + 2)]] * 2
        for w in workers:
            w.stdin.close()  # type: ignore[union-attr]
            assert await asyncio.to_thread(w.wait, 20) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    rows = await db.fetch("SELECT version, status FROM kms_data_keys ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, rounds + 2))
    assert [r["status"] for r in rows].count("active") == 1 and rows[-1]["status"] == "active"


async def test_expired_active_key_rotates_and_encryption_never_fails(
    make_manager: MakeManager, db: asyncpg.Pool
) -> None:
    manager = await make_manager()
    await manager.crypto.encrypt("f", b"before", {})
    await db.execute("UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE version = 1")
    await manager.refresh()  # this replica now knows its active key is expired
    versions: set[int] = set()
    async with asyncio.timeout(3):
        while 2 not in versions:
            versions.add((await manager.crypto.encrypt("f", b"during", {})).key_version)
            await asyncio.sleep(0.005)
    assert versions == {1, 2}
    assert await active_version(db) == 2
    assert await db.fetchval("SELECT status FROM kms_data_keys WHERE version = 1") == "inactive"


async def test_expired_active_key_at_start_is_rotated(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    await make_manager()
    await db.execute("UPDATE kms_data_keys SET expires_at = now() - interval '1 second'")
    manager = await make_manager()
    assert (await manager.active_key()).version == 2
    assert (await manager.crypto.encrypt("f", b"v", {})).key_version == 2


async def test_counts_flush_and_threshold_rotates(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    manager = await make_manager(rotate_after_encryptions=25)
    for _ in range(7):
        await manager.crypto.encrypt("f", b"v", {})
    await eventually(lambda: count_of(db, 1), 7)
    assert await active_version(db) == 1
    await manager.crypto.encrypt_batch([])  # empty batch: counts nothing
    await manager.crypto.encrypt_batch([EncryptItem("f", b"v")] * 18)
    await eventually(lambda: active_version(db), 2)
    assert await db.fetchval("SELECT encryption_count FROM kms_data_keys WHERE version = 1") == 25
    assert (await manager.crypto.encrypt("f", b"v", {})).key_version == 2
