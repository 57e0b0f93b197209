"""Rotation on PostgreSQL: nothing is lost, concurrent rotations make one version, automatic triggers, and
versions numbered per key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from internal.biz.kms import DEFAULT_KEY, USERS_KEY
from internal.biz.kms_cipher import EncryptItem
from internal.biz.pii import Sealed
from tests.integration.kms.conftest import MakeKms, eventually

WORKER = "tests.integration.kms.rotate_worker"


async def active_version(db: asyncpg.Pool, name: str = DEFAULT_KEY) -> int:
    return int(await db.fetchval("SELECT version FROM kms_data_keys WHERE key_name = $1 AND status = 'active'", name))


async def count_of(db: asyncpg.Pool, version: int, name: str = DEFAULT_KEY) -> int:
    return int(
        await db.fetchval(
            "SELECT encryption_count FROM kms_data_keys WHERE key_name = $1 AND version = $2", name, version
        )
    )


async def test_fifty_rotations_of_two_keys_lose_nothing(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    kms = await make_kms()
    await kms.admin.create_key("orders")
    written: list[tuple[str, str, bytes, Sealed, dict[str, str]]] = []
    for i in range(51):
        for name in (DEFAULT_KEY, "orders"):
            for field in ("email", "phone"):
                plaintext, context = f"{name}-{field}-{i}".encode(), {"user_id": str(i)}
                written.append(
                    (name, field, plaintext, await kms.cipher.encrypt(name, field, plaintext, context), context)
                )
            if i < 50:
                await kms.admin.rotate(name, f"rotation {i}")
    for name in (DEFAULT_KEY, "orders"):
        assert sorted({s.key_version for n, _, _, s, _ in written if n == name}) == list(range(1, 52))
    per_key = await db.fetch(
        "SELECT key_name, count(*) FILTER (WHERE status = 'active') AS n FROM kms_data_keys GROUP BY 1"
    )
    assert {r["key_name"]: r["n"] for r in per_key} == {DEFAULT_KEY: 1, "orders": 1, USERS_KEY: 1}
    cold = await make_kms()  # a fresh process: every old version is loaded on demand
    for stack in (kms, cold):
        for name, field, plaintext, sealed, context in written:
            assert (await stack.cipher.decrypt(name, field, sealed.ciphertext, context)).plaintext == plaintext


async def test_concurrent_rotations_in_one_process_make_one_version(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    stacks = [await make_kms() for _ in range(6)]
    for round_ in range(3):
        for s in stacks:
            await s.ring.forget(DEFAULT_KEY)
        results = await asyncio.gather(*(s.admin.rotate(DEFAULT_KEY, "race") for s in stacks))
        assert {r.version for r in results} == {round_ + 2}
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys WHERE key_name = 'default'") == 4
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys WHERE status = 'active'") == 2  # default, users


def _spawn(url: str, key_name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", WORKER, url, key_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )


@pytest.mark.parametrize("key_name", [DEFAULT_KEY, "orders"])
async def test_two_processes_rotating_at_once(
    make_kms: MakeKms, db: asyncpg.Pool, kms_database_url: str, key_name: str
) -> None:
    if key_name != DEFAULT_KEY:
        await (await make_kms()).admin.create_key(key_name)
    workers = [_spawn(kms_database_url, key_name), _spawn(kms_database_url, key_name)]
    rounds = 5
    try:
        # For `default` both start on empty tables at the same time: exactly one first version.
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
    rows = await db.fetch("SELECT version, status FROM kms_data_keys WHERE key_name = $1 ORDER BY version", key_name)
    assert [r["version"] for r in rows] == list(range(1, rounds + 2))
    assert [r["status"] for r in rows].count("active") == 1 and rows[-1]["status"] == "active"
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys WHERE key_name = $1", USERS_KEY) == 1


async def test_expired_active_version_rotates_and_encryption_never_fails(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    kms = await make_kms()
    await kms.cipher.encrypt(DEFAULT_KEY, "f", b"before", {})
    await db.execute(
        "UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE key_name = 'default' AND version = 1"
    )
    await kms.ring.forget(DEFAULT_KEY)  # this replica now knows its active version is expired
    versions: set[int] = set()
    async with asyncio.timeout(3):
        while 2 not in versions:
            versions.add((await kms.cipher.encrypt(DEFAULT_KEY, "f", b"during", {})).key_version)
            await asyncio.sleep(0.005)
    assert versions == {1, 2}
    assert await active_version(db) == 2 and await active_version(db, USERS_KEY) == 1
    assert await db.fetchval("SELECT status FROM kms_data_keys WHERE key_name = 'default' AND version = 1") == (
        "inactive"
    )


async def test_expired_active_version_at_start_is_rotated(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    await make_kms()
    await db.execute("UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE key_name = 'default'")
    kms = await make_kms()
    assert (await kms.admin.active_version(DEFAULT_KEY)).version == 2
    assert (await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == 2
    assert await active_version(db, USERS_KEY) == 1


async def test_counts_flush_and_threshold_rotates(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    kms = await make_kms(rotate_after_encryptions=25)
    await kms.admin.create_key("orders", rotate_after_encryptions=1000)
    for _ in range(7):
        await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
        await kms.cipher.encrypt("orders", "f", b"v", {})
    await eventually(lambda: count_of(db, 1), 7)
    await eventually(lambda: count_of(db, 1, "orders"), 7)
    assert await active_version(db) == 1
    await kms.cipher.encrypt_batch(DEFAULT_KEY, [])  # empty batch: counts nothing
    await kms.cipher.encrypt_batch(DEFAULT_KEY, [EncryptItem("f", b"v")] * 18)
    await kms.cipher.encrypt_batch("orders", [EncryptItem("f", b"v")] * 18)
    await eventually(lambda: active_version(db), 2)
    assert await count_of(db, 1) == 25
    assert (await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == 2
    await eventually(lambda: count_of(db, 1, "orders"), 25)
    assert await active_version(db, "orders") == 1  # its own threshold (1000) is far away
