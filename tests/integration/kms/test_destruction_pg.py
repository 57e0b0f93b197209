"""Destruction only on purpose, on PostgreSQL with an injected clock: a scheduled version refuses to decrypt, survives
maintenance until its waiting period is over and is destroyed (and audited) after it; rotation and expiry never
destroy anything; the users' key loses a version only when no users row needs it. Also the review's input findings
on key administration (page tokens, NUL in free text, the key file's lock)."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from internal.biz import pii
from internal.biz.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from internal.biz.kms import KeySpec
from internal.data.audit import PgAuditLog
from internal.data.kms import PgKeyRepo
from internal.data.kms_file import FileKeyRepo
from internal.data.users_pii import PgUsersPiiStore
from tests.unit.kms.stack import FakeClock, KmsStack, build_kms

SEED = "destruction-test-seed-0123456789"
SALT = "destruction-salt"
USERS_KEY = "authkms.users"


@pytest.fixture
async def pool(own_database: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: these tests rotate and destroy versions of the users' key."""
    created = await asyncpg.create_pool(own_database, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def stack(pool: asyncpg.Pool) -> AsyncIterator[KmsStack]:
    kms = build_kms(
        PgKeyRepo(pool),
        seed=SEED,
        salt=SALT,
        audit=PgAuditLog(pool),
        users_pii=PgUsersPiiStore(pool),
        clock=FakeClock(),
    )
    await kms.open()
    try:
        yield kms
    finally:
        await kms.close()


async def expect(error: type[DomainError], reason: str, awaitable: object) -> DomainError:
    with pytest.raises(error) as caught:
        await awaitable  # type: ignore[misc]
    assert caught.value.reason == reason
    return caught.value


async def test_a_scheduled_version_is_destroyed_only_after_its_waiting_period(
    stack: KmsStack, pool: asyncpg.Pool
) -> None:
    await stack.admin.create_key("dk.orders")
    sealed = await stack.cipher.encrypt("dk.orders", "card", b"4111", {"order": "1"})
    await stack.admin.rotate("dk.orders", "retire v1")
    scheduled = await stack.admin.schedule_destruction("dk.orders", sealed.key_version)
    assert scheduled.status == "pending_destruction" and scheduled.destroy_after is not None
    assert timedelta(days=29, hours=23) < scheduled.destroy_after - stack.clock() <= timedelta(days=30)

    error = await expect(
        FailedPrecondition,
        "KEY_PENDING_DESTRUCTION",
        stack.cipher.decrypt("dk.orders", "card", sealed.ciphertext, {"order": "1"}),
    )
    assert error.metadata["destroy_after"] == str(int(scheduled.destroy_after.timestamp()))
    stack.clock.advance(timedelta(days=29))
    assert (await stack.admin.maintenance(["dk.orders"])).keys_destroyed == 0

    stack.clock.advance(timedelta(days=1, minutes=1))
    assert (await stack.admin.maintenance(["dk.orders"])).keys_destroyed == 1
    await expect(
        NotFound, "KEY_NOT_FOUND", stack.cipher.decrypt("dk.orders", "card", sealed.ciphertext, {"order": "1"})
    )
    row = await pool.fetchrow(
        "SELECT status, encrypted_key FROM kms_data_keys WHERE key_name = 'dk.orders' AND version = $1",
        sealed.key_version,
    )
    assert row["status"] == "revoked" and row["encrypted_key"] is None
    audited = await pool.fetchval(
        "SELECT count(*) FROM audit_events WHERE event = 'kms.key_destroy' AND details->>'key_name' = 'dk.orders'"
    )
    assert audited == 1
    # The current version was never touched.
    again = await stack.cipher.encrypt("dk.orders", "card", b"4222", {"order": "2"})
    assert (await stack.cipher.decrypt("dk.orders", "card", again.ciphertext, {"order": "2"})).plaintext == b"4222"


async def test_rotation_and_expiry_never_destroy_a_callers_version(stack: KmsStack, pool: asyncpg.Pool) -> None:
    """A year of 30-day rotations with maintenance after each: every version stays, every ciphertext opens."""
    await stack.admin.create_key("dk.ledger", rotate_interval_seconds=30 * 86400)
    sealed = []
    for month in range(12):
        sealed.append(await stack.cipher.encrypt("dk.ledger", "amount", str(month).encode(), {}))
        stack.clock.advance(timedelta(days=31))
        # Maintenance or the key ring's own background check rotates the due key: either way nothing goes.
        assert (await stack.admin.maintenance(["dk.ledger"])).keys_destroyed == 0
    assert (await stack.admin.active_version("dk.ledger")).version >= 12
    statuses = {r["status"] for r in await pool.fetch("SELECT status FROM kms_data_keys WHERE key_name = 'dk.ledger'")}
    assert "expired" in statuses and not statuses & {"revoked", "pending_destruction"}
    for month, value in enumerate(sealed):
        assert (await stack.cipher.decrypt("dk.ledger", "amount", value.ciphertext, {})).plaintext == str(
            month
        ).encode()


async def insert_user(stack: KmsStack, pool: asyncpg.Pool, email: str) -> int:
    user_id = int(await pool.fetchval("SELECT nextval('users_id_seq')"))
    context = pii.user_context(user_id)
    sealed = await stack.users.encrypt(pii.EMAIL, email.encode(), context)
    await pool.execute(
        "INSERT INTO users (id, username, password, email_encrypted, email_hash, pii_key_version) "
        "VALUES ($1, $2, 'x', $3, $4, $5)",
        user_id,
        f"u{user_id}",
        sealed.ciphertext,
        stack.users.blind_index(pii.EMAIL, email),
        sealed.key_version,
    )
    return user_id


async def test_users_key_versions_go_only_once_no_row_needs_them(stack: KmsStack, pool: asyncpg.Pool) -> None:
    user_id = await insert_user(stack, pool, "dana@example.com")
    old_row = await pool.fetchrow("SELECT email_encrypted FROM users WHERE id = $1", user_id)
    old_version = (await stack.admin.active_version(USERS_KEY)).version
    await stack.admin.rotate(USERS_KEY, "test")

    report = await stack.admin.maintenance([USERS_KEY])
    assert (report.records_reencrypted, report.remaining, report.destruction_scheduled) == (1, 0, 1)
    assert (await stack.admin.version(USERS_KEY, old_version)).status == "pending_destruction"

    # A backup restores a row still under the old version: past the wait, maintenance must keep the version.
    restored = await insert_user(stack, pool, "erin@example.com")
    await pool.execute(
        "UPDATE users SET email_encrypted = $2, pii_key_version = $3 WHERE id = $1",
        restored,
        old_row["email_encrypted"],
        old_version,
    )
    stack.clock.advance(timedelta(days=31))
    report = await stack.admin.maintenance([USERS_KEY])
    assert report.keys_destroyed == 0 and report.records_failed == 1
    assert (await stack.admin.version(USERS_KEY, old_version)).status == "pending_destruction"

    await pool.execute("DELETE FROM users WHERE id = $1", restored)
    assert (await stack.admin.maintenance([USERS_KEY])).keys_destroyed == 1
    moved = await pool.fetchrow("SELECT email_encrypted FROM users WHERE id = $1", user_id)
    opened = await stack.users.decrypt(pii.EMAIL, bytes(moved["email_encrypted"]), pii.user_context(user_id))
    assert opened == b"dana@example.com"


async def test_admin_input_the_review_found(stack: KmsStack) -> None:
    """Superscript digits in a page token and NUL in free text are the caller's mistakes, not INTERNAL."""
    for token in ("²", "١٢", "-1", "0", "99999999999"):
        await expect(InvalidArgument, "VALIDATION_ERROR", stack.admin.list_versions("default", page_token=token))
    await expect(InvalidArgument, "VALIDATION_ERROR", stack.admin.rotate("default", "a\x00b"))
    await expect(InvalidArgument, "VALIDATION_ERROR", stack.admin.create_key("dk.nul", description="x\x00y"))
    await expect(InvalidArgument, "VALIDATION_ERROR", stack.admin.update_key("default", description="\x1b[31m"))
    await expect(InvalidArgument, "VALIDATION_ERROR", stack.admin.create_key("authkms.mine"))
    await expect(InvalidArgument, "VALIDATION_ERROR", stack.admin.schedule_destruction("default", 1, 3600))


async def test_the_key_files_lock_is_private_and_acquired_with_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    repo = FileKeyRepo(path, lock_timeout=0.3)
    await repo.create_key(KeySpec("default"))
    lock_path = path.with_name(path.name + ".lock")
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
    holder = os.open(lock_path, os.O_RDWR)  # another process (or user) holding the lock
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        error = await expect(Unavailable, "SERVICE_UNAVAILABLE", repo.create_key(KeySpec("other")))
        assert "lock" in error.message
    finally:
        os.close(holder)
    assert (await repo.create_key(KeySpec("other")))[1]
