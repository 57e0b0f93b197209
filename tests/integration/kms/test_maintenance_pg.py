"""Maintenance on PostgreSQL: users' PII moves onto the users' key's active version in batches, versions no row
needs are scheduled for destruction and destroyed only after the waiting period, concurrent edits win."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import asyncpg
import pytest

from internal.biz import pii
from internal.biz.errors import FailedPrecondition, NotFound
from internal.biz.kms import DEFAULT_KEY, USERS_KEY
from internal.biz.kms_admin import MaintenanceProgress
from internal.data.users_pii import PgUsersPiiStore
from internal.pkg.kms.envelope import parse_header
from tests.integration.helpers import insert_user
from tests.integration.kms.conftest import MakeKms, eventually
from tests.unit.kms.stack import FakeClock, KmsStack, user_values

COLUMNS = ("email_encrypted", "phone_encrypted", "name_encrypted", "totp_secret_encrypted")
WAIT = timedelta(days=30)  # the default waiting period before a scheduled destruction


async def assert_rows(db: asyncpg.Pool, kms: KmsStack, version: int, users: Mapping[int, int]) -> None:
    for user_id, i in users.items():
        row = await db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        assert row is not None and row["pii_key_version"] == version
        for field, column in zip(pii.USER_PII_FIELDS, COLUMNS, strict=True):
            expected = user_values(i)[field]
            if expected is None:
                assert row[column] is None
                continue
            assert parse_header(row[column]).key_version == version
            assert await kms.users.decrypt(field, row[column], pii.user_context(user_id)) == expected


async def key_rows(db: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    rows = await db.fetch("SELECT * FROM kms_data_keys WHERE key_name = $1 ORDER BY version", USERS_KEY)
    return {r["version"]: r for r in rows}


async def decrypts(kms: KmsStack, ciphertext: bytes, user_id: int) -> str:
    """What decrypting an old value answers: "ok" or the error's reason."""
    try:
        await kms.users.decrypt(pii.EMAIL, ciphertext, pii.user_context(user_id))
    except (FailedPrecondition, NotFound) as exc:
        return exc.reason
    return "ok"


async def test_maintenance_reencrypts_users_then_destroys_unused_versions(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    clock = FakeClock()
    # No rotation by time: only the rotations below make versions (the moved clock would make every one due).
    kms = await make_kms(clock=clock, rotate_interval=timedelta(0))
    users = {await insert_user(db, kms, i): i for i in range(8)}
    first = min(users)
    old_sample = await db.fetchval("SELECT email_encrypted FROM users WHERE id = $1", first)
    # Another replica, without pub/sub, with version 1 in its cache.
    other = await make_kms(rotate_interval=timedelta(0))
    assert await decrypts(other, old_sample, first) == "ok"
    await kms.admin.rotate(USERS_KEY, "second version")
    users |= {await insert_user(db, kms, i): i for i in range(8, 12)}
    await kms.admin.rotate(USERS_KEY, "third version")
    hashes_before = await db.fetch("SELECT id, email_hash FROM users ORDER BY id")
    assert await kms.admin.users_pending() == 12

    # Nothing is expired yet: re-encryption runs, nothing is scheduled while rows still need old versions.
    report = await kms.admin.maintenance([USERS_KEY], batch_size=5)
    assert (report.records_reencrypted, report.remaining, report.done) == (5, 7, False)
    assert (report.keys_destroyed, report.destruction_scheduled) == (0, 0)

    await db.execute(
        "UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE key_name = $1 AND version < 3",
        USERS_KEY,
    )
    dry = await kms.admin.maintenance([USERS_KEY], dry_run=True)
    assert (dry.expired_marked, dry.records_reencrypted, dry.remaining) == (2, 0, 7)
    assert (dry.keys_destroyed, dry.destruction_scheduled) == (0, 0)
    assert {r["status"] for r in (await key_rows(db)).values() if r["version"] < 3} == {"inactive"}

    progress: list[MaintenanceProgress] = []
    report = await kms.admin.maintenance([USERS_KEY], batch_size=4, progress=progress.append)
    assert (report.expired_marked, report.records_reencrypted, report.remaining) == (2, 4, 3)
    assert (report.keys_destroyed, report.destruction_scheduled) == (0, 0) and progress[-1].reencrypted == 4
    assert {r["status"] for r in (await key_rows(db)).values() if r["version"] < 3} == {"expired"}

    report = await kms.admin.maintenance([USERS_KEY], batch_size=100)
    assert (report.records_reencrypted, report.remaining, report.done) == (3, 0, True)
    # Every row is on version 3 now: versions 1 and 2 are scheduled for destruction, not destroyed.
    assert (report.keys_destroyed, report.destruction_scheduled) == (0, 2)
    keys = await key_rows(db)
    for version in (1, 2):
        assert keys[version]["status"] == "pending_destruction" and keys[version]["encrypted_key"] is not None
        assert keys[version]["destroy_after"] - clock() > WAIT - timedelta(minutes=1)
    await assert_rows(db, kms, 3, users)
    assert await decrypts(kms, old_sample, first) == "KEY_PENDING_DESTRUCTION"
    # The other replica refuses its cached version 1 within its re-check interval.
    await eventually(lambda: decrypts(other, old_sample, first), "KEY_PENDING_DESTRUCTION", within=1.0)

    assert (await kms.admin.maintenance([USERS_KEY])).keys_destroyed == 0  # the waiting period is not over
    clock.advance(WAIT + timedelta(seconds=1))
    report = await kms.admin.maintenance([USERS_KEY])
    assert (report.keys_destroyed, report.destruction_scheduled, report.done) == (2, 0, True)
    keys = await key_rows(db)
    for version in (1, 2):
        assert keys[version]["status"] == "revoked"
        assert keys[version]["encrypted_key"] is None and keys[version]["destroyed_at"] is not None
    assert keys[3]["status"] == "active" and keys[3]["encrypted_key"] is not None
    await assert_rows(db, kms, 3, users)
    assert await db.fetch("SELECT id, email_hash FROM users ORDER BY id") == hashes_before
    assert await decrypts(kms, old_sample, first) == "KEY_NOT_FOUND"
    await eventually(lambda: decrypts(other, old_sample, first), "KEY_NOT_FOUND", within=1.0)

    again = await kms.admin.maintenance([USERS_KEY])
    assert (again.records_reencrypted, again.keys_destroyed, again.remaining, again.done) == (0, 0, 0, True)
    # `default` was never touched by any of it.
    assert await db.fetchval("SELECT count(*) FROM kms_data_keys WHERE key_name = $1", DEFAULT_KEY) == 1
    audit = await db.fetch("SELECT event, details FROM audit_events WHERE event LIKE 'kms.%' ORDER BY id")
    events = [r["event"] for r in audit]
    assert events.count("kms.key_destroy") == 2 and events.count("kms.key_destroy_schedule") == 2
    assert events.count("kms.maintenance") == 7


async def test_undecryptable_row_keeps_its_version(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    clock = FakeClock()
    kms = await make_kms(clock=clock, rotate_interval=timedelta(0))
    good = await insert_user(db, kms, 1)
    bad = await insert_user(db, kms, 2)
    # Bind bad's email to another row: it can no longer be decrypted in place.
    await db.execute(
        "UPDATE users SET email_encrypted = (SELECT email_encrypted FROM users WHERE id = $1) WHERE id = $2", good, bad
    )
    await kms.admin.rotate(USERS_KEY, "second version")
    await db.execute(
        "UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE key_name = $1 AND version = 1",
        USERS_KEY,
    )
    for moved in (1, 0):  # the good row moves on the first run; the bad one never does
        report = await kms.admin.maintenance([USERS_KEY])
        assert (report.records_reencrypted, report.records_failed, report.remaining) == (moved, 1, 1)
        assert (report.keys_destroyed, report.destruction_scheduled, report.done) == (0, 0, False)
        clock.advance(WAIT * 2)
    assert (await key_rows(db))[1]["encrypted_key"] is not None
    assert (await key_rows(db))[1]["status"] == "expired"


class InterferingCipher:
    """The real users' cipher, but the row changes in the database in between (a user edit)."""

    def __init__(self, kms: KmsStack, db: asyncpg.Pool, user_id: int) -> None:
        self.kms, self.db, self.user_id, self.done = kms, db, user_id, False

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        if not self.done:
            self.done = True
            fresh = await self.kms.users.encrypt(pii.EMAIL, b"changed@example.com", pii.user_context(self.user_id))
            await self.db.execute(
                "UPDATE users SET email_encrypted = $2, pii_key_version = $3 WHERE id = $1",
                self.user_id,
                fresh.ciphertext,
                fresh.key_version,
            )
        return await self.kms.users.decrypt(field, ciphertext, context)

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> pii.Sealed:
        return await self.kms.users.encrypt(field, plaintext, context)

    def is_current(self, ciphertext: bytes, active_version: int) -> bool:
        return self.kms.users.is_current(ciphertext, active_version)

    def blind_index(self, field: str, value: str) -> str:
        return self.kms.users.blind_index(field, value)


async def test_concurrent_user_update_is_not_overwritten(make_kms: MakeKms, db: asyncpg.Pool) -> None:
    kms = await make_kms()
    user_id = await insert_user(db, kms, 5)
    other_id = await insert_user(db, kms, 6)
    await kms.admin.rotate(USERS_KEY, "second version")
    kms.admin._users_cipher = InterferingCipher(kms, db, user_id)  # type: ignore[assignment]
    report = await kms.admin.maintenance([USERS_KEY])
    # The edited row was skipped (the user's change wins), the other one moved; nothing is left to move.
    assert (report.records_reencrypted, report.records_failed, report.remaining) == (1, 0, 0)
    row = await db.fetchrow("SELECT email_encrypted, pii_key_version FROM users WHERE id = $1", user_id)
    assert row is not None and row["pii_key_version"] == 2
    opened = await kms.users.decrypt(pii.EMAIL, row["email_encrypted"], pii.user_context(user_id))
    assert opened == b"changed@example.com"
    assert await kms.admin.users_versions_in_use() == {2}
    assert await PgUsersPiiStore(db).pending_count(2) == 0
    other = await db.fetchrow("SELECT email_encrypted, pii_key_version FROM users WHERE id = $1", other_id)
    assert other is not None and other["pii_key_version"] == 2
    assert await kms.users.decrypt(pii.EMAIL, other["email_encrypted"], pii.user_context(other_id)) == (
        b"user6@example.com"
    )


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
async def test_maintenance_of_a_callers_key_leaves_users_alone(
    make_kms: MakeKms, db: asyncpg.Pool, dry_run: bool
) -> None:
    kms = await make_kms()
    user_id = await insert_user(db, kms, 3)
    await kms.admin.rotate(USERS_KEY, "second version")
    report = await kms.admin.maintenance([DEFAULT_KEY], dry_run=dry_run)
    assert (report.records_reencrypted, report.remaining, report.destruction_scheduled) == (0, 0, 0)
    assert await db.fetchval("SELECT pii_key_version FROM users WHERE id = $1", user_id) == 1
