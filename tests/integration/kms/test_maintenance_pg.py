"""Maintenance on PostgreSQL: users PII moves onto the active key, keys are destroyed only when unused."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import asyncpg
import pytest

from internal.biz import pii
from internal.biz.errors import NotFound
from internal.data.kms_reencrypt import UserPiiReencryptor
from internal.pkg.kms.envelope import parse_header
from internal.pkg.kms.manager import KMSManager, MaintenanceProgress
from tests.integration.kms.conftest import MakeManager, eventually

COLUMNS = ("email_encrypted", "phone_encrypted", "name_encrypted", "totp_secret_encrypted")


def values_for(i: int) -> dict[str, bytes | None]:
    return {
        pii.EMAIL: f"user{i}@example.com".encode(),
        pii.PHONE: f"+86138000000{i:02d}".encode() if i % 2 == 0 else None,
        pii.NAME: f"User {i}".encode() if i % 3 == 0 else None,
        pii.TOTP_SECRET: b"JBSWY3DPEHPK3PXP" if i % 4 == 0 else None,
    }


async def insert_user(db: asyncpg.Pool, manager: KMSManager, i: int) -> int:
    """A users row written the way the auth use cases write it (ciphertexts bound to the row id)."""
    user_id = int(await db.fetchval("SELECT nextval('users_id_seq')"))
    context = pii.user_context(user_id)
    ciphertexts: dict[str, bytes | None] = {}
    versions = []
    for field, value in values_for(i).items():
        ciphertexts[field] = None
        if value is not None:
            sealed = await manager.crypto.encrypt(field, value, context)
            ciphertexts[field] = sealed.ciphertext
            versions.append(sealed.key_version)
    await db.execute(
        """
        INSERT INTO users (id, username, password, email_encrypted, email_hash, phone_encrypted,
                           name_encrypted, totp_secret_encrypted, pii_key_version)
        VALUES ($1, $2, 'x', $3, $4, $5, $6, $7, $8)
        """,
        user_id,
        f"user{i}",
        ciphertexts[pii.EMAIL],
        manager.crypto.blind_index(pii.EMAIL, f"user{i}@example.com"),
        ciphertexts[pii.PHONE],
        ciphertexts[pii.NAME],
        ciphertexts[pii.TOTP_SECRET],
        min(versions),
    )
    return user_id


async def assert_rows(db: asyncpg.Pool, manager: KMSManager, version: int, users: Mapping[int, int]) -> None:
    for user_id, i in users.items():
        row = await db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        assert row is not None and row["pii_key_version"] == version
        for field, column in zip(pii.USER_PII_FIELDS, COLUMNS, strict=True):
            expected = values_for(i)[field]
            if expected is None:
                assert row[column] is None
                continue
            assert parse_header(row[column]).key_version == version
            assert await manager.crypto.decrypt(field, row[column], pii.user_context(user_id)) == expected


async def key_rows(db: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    return {r["version"]: r for r in await db.fetch("SELECT * FROM kms_data_keys ORDER BY version")}


async def test_maintenance_reencrypts_users_and_destroys_unused_keys(
    make_manager: MakeManager, db: asyncpg.Pool
) -> None:
    manager = await make_manager(destroy_grace=timedelta(0))
    users = {await insert_user(db, manager, i): i for i in range(8)}
    old_sample = await db.fetchval("SELECT email_encrypted FROM users ORDER BY id LIMIT 1")
    # Another replica, without pub/sub, with key 1 in its cache.
    other = await make_manager()
    assert await other.crypto.decrypt(pii.EMAIL, old_sample, pii.user_context(min(users))) == b"user0@example.com"
    await manager.rotate("second key")
    users |= {await insert_user(db, manager, i): i for i in range(8, 12)}
    await manager.rotate("third key")
    hashes_before = await db.fetch("SELECT id, email_hash FROM users ORDER BY id")

    # Nothing is expired yet: re-encryption runs, but no key may be destroyed.
    report = await manager.maintenance(batch_size=5)
    assert (report.records_reencrypted, report.remaining, report.keys_destroyed, report.done) == (5, 7, 0, False)

    await db.execute("UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE version < 3")
    dry = await manager.maintenance(dry_run=True)
    assert (dry.expired_marked, dry.records_reencrypted, dry.remaining) == (2, 0, 7)
    assert dry.keys_destroyed == 0  # key 1 and 2 are still referenced by the remaining rows
    assert {r["status"] for r in (await key_rows(db)).values() if r["version"] < 3} == {"inactive"}

    progress: list[MaintenanceProgress] = []
    report = await manager.maintenance(batch_size=4, progress=progress.append)
    assert (report.expired_marked, report.records_reencrypted, report.remaining) == (2, 4, 3)
    # Rows 1-8 (key 1) are all re-encrypted now, rows 9-12 (key 2) not yet: only key 1 goes.
    assert report.keys_destroyed == 1 and progress[-1].reencrypted == 4
    keys = await key_rows(db)
    assert keys[1]["status"] == "revoked" and keys[1]["encrypted_key"] is None
    assert keys[2]["status"] == "expired" and keys[2]["encrypted_key"] is not None

    report = await manager.maintenance(batch_size=100)
    assert (report.records_reencrypted, report.remaining, report.keys_destroyed, report.done) == (3, 0, 1, True)
    keys = await key_rows(db)
    for version in (1, 2):
        assert keys[version]["status"] == "revoked"
        assert keys[version]["encrypted_key"] is None and keys[version]["destroyed_at"] is not None
    assert keys[3]["status"] == "active" and keys[3]["encrypted_key"] is not None
    await assert_rows(db, manager, 3, users)
    assert await db.fetch("SELECT id, email_hash FROM users ORDER BY id") == hashes_before
    with pytest.raises(NotFound) as exc:
        await manager.crypto.decrypt(pii.EMAIL, old_sample, pii.user_context(min(users)))
    assert exc.value.reason == "KEY_NOT_FOUND"

    # The other replica drops its cached copy of key 1 within its re-check interval.
    async def other_decrypts_old_value() -> bool:
        try:
            await other.crypto.decrypt(pii.EMAIL, old_sample, pii.user_context(min(users)))
        except NotFound:
            return False
        return True

    await eventually(other_decrypts_old_value, False, within=1.0)

    again = await manager.maintenance()
    assert (again.records_reencrypted, again.keys_destroyed, again.remaining, again.done) == (0, 0, 0, True)
    audit = await db.fetch("SELECT event, outcome, details FROM audit_events WHERE event LIKE 'kms.%' ORDER BY id")
    events = [r["event"] for r in audit]
    assert events.count("kms.key_destroy") == 2 and events.count("kms.maintenance") == 5


async def test_undecryptable_row_keeps_its_key(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    manager = await make_manager(destroy_grace=timedelta(0))
    good = await insert_user(db, manager, 1)
    bad = await insert_user(db, manager, 2)
    # Bind bad's email to another row: it can no longer be decrypted in place.
    await db.execute(
        "UPDATE users SET email_encrypted = (SELECT email_encrypted FROM users WHERE id = $1) WHERE id = $2", good, bad
    )
    await manager.rotate("second key")
    await db.execute("UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE version = 1")
    report = await manager.maintenance()
    assert (report.records_reencrypted, report.records_failed, report.remaining) == (1, 1, 1)
    assert report.keys_destroyed == 0 and not report.done
    assert (await key_rows(db))[1]["encrypted_key"] is not None


class InterferingCipher:
    """Decrypts through the real cipher, but changes the row in the database in between (a user edit)."""

    def __init__(self, manager: KMSManager, db: asyncpg.Pool, user_id: int) -> None:
        self.manager, self.db, self.user_id, self.done = manager, db, user_id, False

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        if not self.done:
            self.done = True
            fresh = await self.manager.crypto.encrypt(pii.EMAIL, b"changed@example.com", pii.user_context(self.user_id))
            await self.db.execute(
                "UPDATE users SET email_encrypted = $2, pii_key_version = $3 WHERE id = $1",
                self.user_id,
                fresh.ciphertext,
                fresh.key_version,
            )
        return await self.manager.crypto.decrypt(field, ciphertext, context)

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> pii.Sealed:
        return await self.manager.crypto.encrypt(field, plaintext, context)

    def blind_index(self, field: str, value: str) -> str:
        return self.manager.crypto.blind_index(field, value)


async def test_concurrent_user_update_is_not_overwritten(make_manager: MakeManager, db: asyncpg.Pool) -> None:
    manager = await make_manager(targets=False)
    user_id = await insert_user(db, manager, 5)
    other_id = await insert_user(db, manager, 6)
    await manager.rotate("second key")
    target = UserPiiReencryptor(db)
    batch = await target.reencrypt_batch(InterferingCipher(manager, db, user_id), 2, None, 10)
    assert (batch.scanned, batch.reencrypted, batch.skipped, batch.failed, batch.cursor) == (2, 1, 1, 0, None)
    row = await db.fetchrow("SELECT email_encrypted, pii_key_version FROM users WHERE id = $1", user_id)
    assert row is not None
    assert await manager.crypto.decrypt(pii.EMAIL, row["email_encrypted"], pii.user_context(user_id)) == (
        b"changed@example.com"
    )
    assert row["pii_key_version"] == 2
    assert await target.versions_in_use() == {2}
    assert await target.pending(2) == 0
    assert other_id != user_id
