"""Start-up on PostgreSQL: the built-in keys, restart, wrong root key, altered rows, the container's wiring, audit."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from internal.biz.kms import DEFAULT_KEY, USERS_KEY, NoKeyEvents
from internal.biz.kms_keyring import RootKeyMismatch
from internal.conf.config import Kms
from internal.container import key_repo, key_ring_resource
from internal.data.audit import PgAuditLog
from internal.data.kms import PgKeyRepo
from internal.data.kms_file import FileKeyRepo
from tests.integration.kms.conftest import SALT, SEED, MakeKms


async def test_empty_tables_get_default_and_the_users_key(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    kms = await make_kms()
    info = await kms.admin.active_version(DEFAULT_KEY)
    assert (info.key_name, info.version, info.status, info.algorithm) == (DEFAULT_KEY, 1, "active", "AES-256-GCM")
    assert sorted(r["name"] for r in await db.fetch("SELECT name FROM kms_keys")) == [USERS_KEY, DEFAULT_KEY]
    rows = await db.fetch("SELECT * FROM kms_data_keys ORDER BY key_name")
    assert [(r["key_name"], r["version"], r["status"]) for r in rows] == [
        (USERS_KEY, 1, "active"),
        (DEFAULT_KEY, 1, "active"),
    ]
    for row in rows:
        assert len(row["key_hash"]) == 64 and row["expires_at"] is not None and row["encrypted_key"] is not None
    sealed = await kms.cipher.encrypt(DEFAULT_KEY, "email", b"alice@example.com", {"user_id": "1"})
    again = await make_kms()
    opened = await again.cipher.decrypt(DEFAULT_KEY, "email", sealed.ciphertext, {"user_id": "1"})
    assert opened.plaintext == b"alice@example.com"
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys") == 2


async def test_concurrent_first_starts_make_one_version_per_key(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    stacks = await asyncio.gather(*(make_kms() for _ in range(5)))
    assert {(await s.admin.active_version(DEFAULT_KEY)).version for s in stacks} == {1}
    assert {(await s.admin.active_version(USERS_KEY)).version for s in stacks} == {1}
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys") == 2


async def test_wrong_seed_refuses_to_start(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    good = await make_kms()
    await good.admin.rotate(DEFAULT_KEY, "second version")
    await good.admin.create_key("orders")
    before = await db.fetch("SELECT key_name, id, version, status, encrypted_key FROM kms_data_keys ORDER BY id")
    with pytest.raises(RootKeyMismatch) as exc:
        await make_kms(seed=SEED + "-typo")
    message = str(exc.value)
    assert "root key does not match stored data keys (wrong kms.seed/kms.salt?)" in message
    assert "4 of 4" in message and SEED not in message
    after = await db.fetch("SELECT key_name, id, version, status, encrypted_key FROM kms_data_keys ORDER BY id")
    assert before == after  # no key was created over the unreadable ones


async def test_altered_row_refuses_to_start(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    kms = await make_kms()
    await kms.admin.rotate(DEFAULT_KEY, "second version")
    # Copy version 2's wrapped material into version 1's row: a wrapped key is bound to its own id and version.
    await db.execute(
        "UPDATE kms_data_keys SET encrypted_key = (SELECT encrypted_key FROM kms_data_keys "
        "WHERE key_name = 'default' AND version = 2) WHERE key_name = 'default' AND version = 1"
    )
    with pytest.raises(RootKeyMismatch, match=r"altered\): 1 of 3 .*\(default v1\)"):
        await make_kms()


def test_the_container_picks_the_configured_storage(tmp_path: object) -> None:
    assert isinstance(key_repo(Kms(iterations=10_000), None), PgKeyRepo)  # type: ignore[arg-type]
    path = f"{tmp_path}/k.json"
    repo = key_repo(Kms(iterations=10_000, storage_type="file", storage_path=path), None)  # type: ignore[arg-type]
    assert isinstance(repo, FileKeyRepo) and str(repo.path) == path


async def test_container_key_ring_and_rotation_audit(db: asyncpg.Pool) -> None:
    config = Kms(iterations=10_000, seed=SEED, salt=SALT)
    resource = key_ring_resource(config, key_repo(config, db), NoKeyEvents(), PgAuditLog(db))
    ring = await anext(resource)
    try:
        await ring.rotate(DEFAULT_KEY, "audit me")
        _, policy, active = await ring.describe(DEFAULT_KEY)
        assert ring.repo.kind == "database" and active is not None and active.version == 2
        assert policy.algorithm == "AES-256-GCM"
        assert await ring.repo.statistics(DEFAULT_KEY) == {
            "active": 1,
            "inactive": 1,
            "expired": 0,
            "pending_destruction": 0,
            "revoked": 0,
        }
    finally:
        await resource.aclose()
    assert not ring.initialized
    rows = await db.fetch("SELECT event, outcome, actor, details FROM audit_events ORDER BY id")
    events = [(r["event"], r["outcome"]) for r in rows]
    assert ("kms.key_rotate", "success") in events
    assert all(r["actor"] == "kms" for r in rows)
    assert '"reason": "audit me"' in rows[-1]["details"] and '"key_name": "default"' in rows[-1]["details"]
