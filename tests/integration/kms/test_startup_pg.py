"""Start-up on PostgreSQL: first key, restart, wrong root key, altered rows, audit."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from internal.conf.config import Kms
from internal.pkg.kms import build_kms
from internal.pkg.kms.manager import RootKeyMismatch
from tests.integration.kms.conftest import SEED, MakeManager


async def test_empty_table_creates_key_one(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    manager = await make_manager()
    info = await manager.active_key()
    assert (info.version, info.status, info.algorithm) == (1, "active", "AES-256-GCM")
    row = await db.fetchrow("SELECT * FROM kms_data_keys")
    assert row is not None
    assert row["version"] == 1 and row["status"] == "active" and len(row["key_hash"]) == 64
    assert row["expires_at"] is not None and row["encrypted_key"] is not None
    sealed = await manager.crypto.encrypt("email", b"alice@example.com", {"user_id": "1"})
    again = await make_manager()
    assert await again.crypto.decrypt("email", sealed.ciphertext, {"user_id": "1"}) == b"alice@example.com"
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys") == 1


async def test_concurrent_first_starts_make_one_key(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    managers = await asyncio.gather(*(make_manager() for _ in range(5)))
    assert {(await m.active_key()).version for m in managers} == {1}
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys") == 1


async def test_wrong_seed_refuses_to_start(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    good = await make_manager()
    await good.rotate("second key")
    before = await db.fetch("SELECT id, version, status, encrypted_key FROM kms_data_keys ORDER BY version")
    with pytest.raises(RootKeyMismatch) as exc:
        await make_manager(seed=SEED + "-typo")
    message = str(exc.value)
    assert "root key does not match stored data keys (wrong kms.seed/kms.salt?)" in message
    assert "2 of 2" in message and SEED not in message
    after = await db.fetch("SELECT id, version, status, encrypted_key FROM kms_data_keys ORDER BY version")
    assert before == after  # no key was created over the unreadable ones


async def test_altered_row_refuses_to_start(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    manager = await make_manager()
    await manager.rotate("second key")
    # Copy key 2's wrapped material into key 1's row: a wrapped key is bound to its own id and version.
    await db.execute(
        "UPDATE kms_data_keys SET encrypted_key = (SELECT encrypted_key FROM kms_data_keys WHERE version = 2) "
        "WHERE version = 1"
    )
    with pytest.raises(RootKeyMismatch, match=r"altered\): 1 of 2 .*versions 1\)"):
        await make_manager()


async def test_build_kms_and_rotation_audit(db: asyncpg.Pool) -> None:
    config = Kms(iterations=10_000, seed=SEED, salt="integration-salt")
    manager = build_kms(config, db, None, "test:", [])
    await manager.initialize()
    try:
        await manager.rotate("audit me")
        status = await manager.status()
        assert status.storage_type == "database" and status.active_version == 2
        assert status.counts == {"active": 1, "inactive": 1, "expired": 0, "revoked": 0}
    finally:
        await manager.close()
    rows = await db.fetch("SELECT event, outcome, actor, details FROM audit_events ORDER BY id")
    events = [(r["event"], r["outcome"]) for r in rows]
    assert ("kms.key_rotate", "success") in events
    assert all(r["actor"] == "kms" for r in rows)
    assert '"reason": "audit me"' in rows[-1]["details"]


async def test_build_kms_needs_a_pool_for_database_storage() -> None:
    with pytest.raises(ValueError, match="pool"):
        build_kms(Kms(iterations=10_000), None, None, "", [])
