"""KeyRing and KeyAdmin over in-memory storage: start-up checks, rotation triggers, listing, scheduled
destruction with an injected clock, maintenance (users' PII included), shutdown."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from internal.biz import pii
from internal.biz.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from internal.biz.kms import DEFAULT_KEY, USERS_KEY, KeyStatus
from internal.biz.kms_admin import MaintenanceProgress
from internal.biz.kms_cipher import DecryptItem
from internal.biz.kms_keyring import RootKeyMismatch
from internal.data.kms_file import MemoryKeyRepo
from tests.unit.kms.conftest import SEED, MakeKms
from tests.unit.kms.stack import CountingRepo, FakeClock, FakeUsersPii, KmsStack, replace_record, until, user_values

WEEK = timedelta(days=7)


def active_version(repo: MemoryKeyRepo, name: str = DEFAULT_KEY) -> int:
    active = repo.set.active(name)
    return active.version if active else 0


async def test_first_start_creates_the_builtin_keys_and_restart_reuses_them(make_kms: MakeKms) -> None:
    repo = MemoryKeyRepo()
    first = await make_kms(repo).open()
    sealed = await first.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    users = await first.users.encrypt(pii.EMAIL, b"a@b.com", {"user_id": "1"})
    await first.close()
    assert sorted(repo.set.keys) == [USERS_KEY, DEFAULT_KEY]
    second = await make_kms(repo).open()
    assert (await second.admin.active_version(DEFAULT_KEY)).version == 1
    assert (await second.admin.active_version(USERS_KEY)).version == 1
    assert (await second.cipher.decrypt(DEFAULT_KEY, "f", sealed.ciphertext, {})).plaintext == b"v"
    assert await second.users.decrypt(pii.EMAIL, users.ciphertext, {"user_id": "1"}) == b"a@b.com"
    assert len(await repo.all_versions()) == 2


async def test_wrong_seed_refuses_to_start(make_kms: MakeKms) -> None:
    repo = MemoryKeyRepo()
    good = await make_kms(repo).open()
    await good.admin.rotate(DEFAULT_KEY, "two versions")
    await good.close()
    bad = make_kms(repo, seed=SEED + "-wrong")
    with pytest.raises(
        RootKeyMismatch, match=r"root key does not match stored data keys \(wrong kms.seed/kms.salt\?\)"
    ):
        await bad.open()
    assert not bad.ring.initialized
    assert len(await repo.all_versions()) == 3  # nothing was created over the unreadable keys


async def test_steady_state_encrypt_makes_no_storage_calls(make_kms: MakeKms) -> None:
    repo = CountingRepo(MemoryKeyRepo())
    kms = await make_kms(repo, cache_recheck_interval=timedelta(seconds=60)).open()
    await kms.admin.create_key("orders")
    await kms.cipher.encrypt(DEFAULT_KEY, "f", b"warm-up", {})
    await kms.cipher.encrypt("orders", "f", b"warm-up", {})
    repo.calls.clear()
    for i in range(1000):
        await kms.cipher.encrypt(DEFAULT_KEY, "f", b"value", {"i": str(i)})
        await kms.cipher.encrypt("orders", "f", b"value", {"i": str(i)})
    await kms.cipher.encrypt_batch(DEFAULT_KEY, [])
    kms.cipher.blind_index("orders", "email", "a@b.com")
    assert repo.calls == []
    assert (await kms.admin.status(DEFAULT_KEY)).active_encryption_count == 1001
    assert (await kms.admin.status("orders")).active_encryption_count == 1001
    await kms.close()
    assert "add_encryption_counts" in repo.calls  # flushed at shutdown
    assert repo.inner.set.versions[("orders", 1)].encryption_count == 1001


async def test_encryption_threshold_rotates(make_kms: MakeKms) -> None:
    repo = MemoryKeyRepo()
    kms = await make_kms(repo, rotate_after_encryptions=5, cache_recheck_interval=timedelta(seconds=30)).open()
    for _ in range(5):
        await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    await until(lambda: active_version(repo) == 2)
    v1 = await repo.get_version(DEFAULT_KEY, 1)
    assert v1 is not None and v1.encryption_count == 5 and v1.status is KeyStatus.INACTIVE
    assert (await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == 2
    assert active_version(repo, USERS_KEY) == 1  # counted per key: the users' key was not used


async def test_expired_active_version_never_stops_encryption(make_kms: MakeKms) -> None:
    repo = MemoryKeyRepo()
    kms = await make_kms(repo, cache_recheck_interval=timedelta(seconds=30)).open()
    replace_record(repo, DEFAULT_KEY, 1, expires_at=kms.clock() - timedelta(seconds=1))
    kms.ring.drop_cache()  # the cache now holds the expired record
    sealed = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})  # still works with version 1 ...
    assert sealed.key_version == 1
    await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})  # ... and wakes the background rotation
    await until(lambda: active_version(repo) == 2)
    assert (await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == 2
    assert (await kms.cipher.decrypt(DEFAULT_KEY, "f", sealed.ciphertext, {})).plaintext == b"v"


async def test_expired_active_version_at_start_is_rotated(make_kms: MakeKms) -> None:
    repo = MemoryKeyRepo()
    first = await make_kms(repo).open()
    await first.close()
    replace_record(repo, DEFAULT_KEY, 1, expires_at=first.clock() - timedelta(seconds=1))
    kms = await make_kms(repo).open()
    assert (await kms.admin.active_version(DEFAULT_KEY)).version == 2
    assert (await kms.admin.active_version(USERS_KEY)).version == 1


async def test_rotate_interval_rotates(make_kms: MakeKms) -> None:
    repo = MemoryKeyRepo()
    await make_kms(repo, rotate_interval=timedelta(seconds=0.3)).open()
    await until(lambda: active_version(repo) >= 2)


async def test_a_key_policy_overrides_the_service_default(make_kms: MakeKms) -> None:
    repo, clock = MemoryKeyRepo(), FakeClock()
    kms = make_kms(repo, clock=clock, rotate_interval=timedelta(0), cache_recheck_interval=timedelta(seconds=30))
    await kms.open()
    await kms.admin.create_key("orders", rotate_interval_seconds=3600, rotate_after_encryptions=3)
    for _ in range(3):
        await kms.cipher.encrypt("orders", "f", b"v", {})
    await until(lambda: active_version(repo, "orders") == 2)
    clock.advance(timedelta(hours=2))
    assert kms.ring.rotation_due("orders") == "active key expired"  # its lifetime is its rotate interval
    assert kms.ring.rotation_due(DEFAULT_KEY) is None  # `default` follows the service default: no rotation by time
    report = await kms.admin.maintenance(["orders", DEFAULT_KEY])
    assert report.rotated and (active_version(repo, "orders"), active_version(repo)) == (3, 1)


async def test_list_versions_pages_and_filters(kms: KmsStack) -> None:
    admin = kms.admin
    for _ in range(6):
        await admin.rotate(DEFAULT_KEY, "listing")
    first = await admin.list_versions(DEFAULT_KEY, page_size=3)
    assert [k.version for k in first.items] == [7, 6, 5] and first.next_page_token == "5"
    second = await admin.list_versions(DEFAULT_KEY, page_size=3, page_token=first.next_page_token)
    third = await admin.list_versions(DEFAULT_KEY, page_size=3, page_token=second.next_page_token)
    assert [k.version for k in second.items + third.items] == [4, 3, 2, 1] and third.next_page_token == ""
    assert {k.key_name for k in first.items} == {DEFAULT_KEY}
    assert [k.version for k in (await admin.list_versions(DEFAULT_KEY, status="active")).items] == [7]
    inactive = await admin.list_versions(DEFAULT_KEY, status="inactive", page_size=100)
    assert [k.version for k in inactive.items] == [6, 5, 4, 3, 2, 1]
    assert [k.version for k in (await admin.list_versions(USERS_KEY)).items] == [1]  # versions are per key
    for bad in ({"page_token": "x"}, {"page_token": "-1"}, {"status": "bogus"}):
        with pytest.raises(InvalidArgument) as exc:
            await admin.list_versions(DEFAULT_KEY, **bad)  # type: ignore[arg-type]
        assert exc.value.reason == "VALIDATION_ERROR"
    assert (await admin.version(DEFAULT_KEY, 3)).status == "inactive"
    with pytest.raises(NotFound) as missing:
        await admin.version(DEFAULT_KEY, 99)
    assert missing.value.reason == "KEY_NOT_FOUND"
    with pytest.raises(NotFound):
        await admin.list_versions("no.such.key")
    with pytest.raises(InvalidArgument):
        await admin.version(DEFAULT_KEY, 0)
    status = await admin.status(DEFAULT_KEY)
    assert status.initialized and status.active_version == 7 and status.counts["inactive"] == 6
    assert status.storage_type == "memory" and status.key_name == DEFAULT_KEY


async def test_create_update_and_list_named_keys(kms: KmsStack) -> None:
    admin = kms.admin
    created = await admin.create_key("orders", description="order lines", destruction_wait_seconds=8 * 86400)
    assert (created.name, created.active_version, created.reserved) == ("orders", 1, False)
    assert created.policy.destruction_wait == timedelta(days=8) and created.policy.algorithm == "AES-256-GCM"
    with pytest.raises(Conflict) as exists:
        await admin.create_key("orders")
    assert exists.value.reason == "KEY_EXISTS"
    for name in (USERS_KEY, "authkms.other"):
        with pytest.raises(InvalidArgument) as reserved:
            await admin.create_key(name)
        assert reserved.value.reason == "VALIDATION_ERROR"
    for options in ({"rotate_interval_seconds": 60}, {"destruction_wait_seconds": 86400}, {"algorithm": "AES-256-CBC"}):
        with pytest.raises(InvalidArgument):
            await admin.create_key("other", **options)  # type: ignore[arg-type]
    updated = await admin.update_key("orders", rotate_after_encryptions=10, description="changed")
    assert updated.policy.rotate_after_encryptions == 10 and updated.description == "changed"
    assert updated.policy.destruction_wait == timedelta(days=8)  # zero values leave a policy as it is
    with pytest.raises(NotFound):
        await admin.update_key("no.such.key", description="x")
    everything = await admin.list_keys(0, "", lambda _: True)
    assert [k.name for k in everything.items] == [USERS_KEY, DEFAULT_KEY, "orders"]
    visible = await admin.list_keys(1, "", lambda name: not name.startswith("authkms."))
    assert [k.name for k in visible.items] == [DEFAULT_KEY] and visible.next_page_token == DEFAULT_KEY
    rest = await admin.list_keys(1, visible.next_page_token, lambda name: not name.startswith("authkms."))
    assert [k.name for k in rest.items] == ["orders"] and rest.next_page_token == ""


async def test_pending_destruction_refuses_to_decrypt_until_cancelled(make_kms: MakeKms) -> None:
    kms = await make_kms(rotate_interval=timedelta(0)).open()
    await kms.admin.create_key("orders")
    old = await kms.cipher.encrypt("orders", "f", b"old", {})
    assert (await kms.cipher.decrypt("orders", "f", old.ciphertext, {})).plaintext == b"old"  # now cached
    await kms.admin.rotate("orders", "before destruction")
    new = await kms.cipher.encrypt("orders", "f", b"new", {})
    with pytest.raises(FailedPrecondition) as active:
        await kms.admin.schedule_destruction("orders", 2)
    assert active.value.reason == "KEY_STATE_INVALID"
    with pytest.raises(InvalidArgument) as short:
        await kms.admin.schedule_destruction("orders", 1, waiting_period_seconds=86400)
    assert short.value.reason == "VALIDATION_ERROR"
    scheduled = await kms.admin.schedule_destruction("orders", 1, waiting_period_seconds=8 * 86400)
    assert scheduled.status == "pending_destruction" and scheduled.destroy_after is not None
    assert scheduled.destroy_after - kms.clock() > timedelta(days=7, hours=23)
    with pytest.raises(FailedPrecondition) as pending:
        await kms.cipher.decrypt("orders", "f", old.ciphertext, {})
    assert pending.value.reason == "KEY_PENDING_DESTRUCTION"
    assert pending.value.metadata == {
        "key_name": "orders",
        "key_version": "1",
        "destroy_after": str(int(scheduled.destroy_after.timestamp())),
    }
    opened = await kms.cipher.decrypt_batch(
        "orders", [DecryptItem("f", old.ciphertext, {}), DecryptItem("f", new.ciphertext, {})]
    )
    assert getattr(opened[0], "reason", None) == "KEY_PENDING_DESTRUCTION" and opened[1].plaintext == b"new"
    with pytest.raises(FailedPrecondition):
        await kms.cipher.rewrap("orders", "f", old.ciphertext, {})
    with pytest.raises(FailedPrecondition) as twice:
        await kms.admin.schedule_destruction("orders", 1)
    assert twice.value.reason == "KEY_STATE_INVALID"
    assert (await kms.admin.status("orders")).counts["pending_destruction"] == 1

    cancelled = await kms.admin.cancel_destruction("orders", 1)
    assert cancelled.status == "inactive" and cancelled.destroy_after is None
    assert (await kms.cipher.decrypt("orders", "f", old.ciphertext, {})).plaintext == b"old"
    with pytest.raises(FailedPrecondition) as not_pending:
        await kms.admin.cancel_destruction("orders", 1)
    assert not_pending.value.reason == "KEY_STATE_INVALID"
    kms.clock.advance(timedelta(days=400))
    report = await kms.admin.maintenance(["orders"])
    assert report.keys_destroyed == 0
    assert (await kms.cipher.decrypt("orders", "f", old.ciphertext, {})).plaintext == b"old"


async def test_destruction_happens_only_after_destroy_after(make_kms: MakeKms) -> None:
    kms = await make_kms(rotate_interval=timedelta(0)).open()
    await kms.admin.create_key("orders")
    old = await kms.cipher.encrypt("orders", "f", b"old", {})
    await kms.admin.rotate("orders")
    await kms.admin.schedule_destruction("orders", 1, waiting_period_seconds=int(WEEK.total_seconds()))
    assert (await kms.admin.maintenance(["orders"], dry_run=True)).keys_destroyed == 0
    assert (await kms.admin.maintenance(["orders"])).keys_destroyed == 0
    kms.clock.advance(WEEK - timedelta(seconds=5))
    assert (await kms.admin.maintenance(["orders"])).keys_destroyed == 0
    assert (await kms.repo.get_version("orders", 1)).wrapped_key is not None  # type: ignore[union-attr]
    kms.clock.advance(timedelta(seconds=10))
    assert (await kms.admin.maintenance(["orders"], dry_run=True)).keys_destroyed == 1
    assert (await kms.repo.get_version("orders", 1)).status is KeyStatus.PENDING_DESTRUCTION  # type: ignore[union-attr]
    report = await kms.admin.maintenance(["orders"])
    assert report.keys_destroyed == 1 and report.destruction_scheduled == 0
    record = await kms.repo.get_version("orders", 1)
    assert record is not None and record.status is KeyStatus.REVOKED and record.wrapped_key is None
    assert record.destroyed_at is not None
    with pytest.raises(NotFound) as gone:
        await kms.cipher.decrypt("orders", "f", old.ciphertext, {})
    assert gone.value.reason == "KEY_NOT_FOUND"
    with pytest.raises(FailedPrecondition):
        await kms.admin.cancel_destruction("orders", 1)
    assert (await kms.admin.status("orders")).counts == {
        "active": 1,
        "inactive": 0,
        "expired": 0,
        "pending_destruction": 0,
        "revoked": 1,
    }
    events = [e["event"] for e in kms.audit.events]  # type: ignore[attr-defined]
    assert events.count("kms.key_destroy_schedule") == 1 and events.count("kms.key_destroy") == 1


async def test_maintenance_never_destroys_unscheduled_versions_of_a_callers_key(make_kms: MakeKms) -> None:
    # A long re-check: only maintenance acts here (the moved clock makes every version due at once).
    kms = await make_kms(cache_recheck_interval=timedelta(seconds=30)).open()
    await kms.admin.create_key("orders", rotate_interval_seconds=3600)
    sealed = [await kms.cipher.encrypt("orders", "f", b"v1", {})]
    for i in range(3):
        await kms.admin.rotate("orders", f"rotation {i}")
        sealed.append(await kms.cipher.encrypt("orders", "f", f"v{i + 2}".encode(), {}))
    kms.clock.advance(timedelta(days=800))  # every version long expired, past every waiting period
    expired = 0
    for _ in range(3):
        report = await kms.admin.maintenance(["orders", DEFAULT_KEY])
        assert (report.keys_destroyed, report.destruction_scheduled) == (0, 0)
        expired += report.expired_marked
    assert expired >= 4  # versions 1-4 (and whatever the due rotations retired) expired, none destroyed
    statuses: dict[str, dict[int, KeyStatus]] = {}
    for name in ("orders", DEFAULT_KEY):
        versions = await kms.repo.list_versions(name, status=None, before_version=None, limit=50)
        statuses[name] = {r.version: r.status for r in versions}
        assert all(r.wrapped_key is not None for r in versions)
        assert set(statuses[name].values()) <= {KeyStatus.ACTIVE, KeyStatus.INACTIVE, KeyStatus.EXPIRED}
    assert [statuses["orders"][v] for v in (1, 2, 3, 4)] == [KeyStatus.EXPIRED] * 4
    assert statuses[DEFAULT_KEY][1] is KeyStatus.EXPIRED  # rotated by maintenance, then expired: still there
    for i, value in enumerate(sealed):
        assert (await kms.cipher.decrypt("orders", "f", value.ciphertext, {})).plaintext == f"v{i + 1}".encode()


async def insert_users(kms: KmsStack, store: FakeUsersPii, ids: range) -> None:
    for i in ids:
        row: dict[str, bytes | None] = {}
        for field, value in user_values(i).items():
            row[field] = (await kms.users.encrypt(field, value, pii.user_context(i))).ciphertext if value else None
        store.rows[i] = row


async def test_maintenance_moves_users_pii_then_destroys_what_no_row_needs(make_kms: MakeKms) -> None:
    store = FakeUsersPii()
    kms = await make_kms(users_pii=store, rotate_interval=timedelta(0)).open()
    await insert_users(kms, store, range(1, 11))
    await kms.admin.rotate(USERS_KEY, "before maintenance")
    dry = await kms.admin.maintenance([USERS_KEY], dry_run=True)
    assert (dry.records_reencrypted, dry.keys_destroyed, dry.destruction_scheduled, dry.remaining) == (0, 0, 0, 10)
    assert await kms.admin.users_pending() == 10
    seen: list[MaintenanceProgress] = []
    report = await kms.admin.maintenance([USERS_KEY], batch_size=4, progress=seen.append)
    assert (report.records_reencrypted, report.remaining, report.keys_destroyed, report.destruction_scheduled) == (
        4,
        6,
        0,
        0,
    )
    assert not report.done and seen[-1] == MaintenanceProgress("users.pii", 4, 0, 0)
    report = await kms.admin.maintenance([USERS_KEY], batch_size=100)
    assert (report.records_reencrypted, report.remaining, report.done) == (6, 0, True)
    # No row needs version 1 any more: its destruction is scheduled, not done.
    assert (report.keys_destroyed, report.destruction_scheduled) == (0, 1)
    v1 = await kms.repo.get_version(USERS_KEY, 1)
    assert v1 is not None and v1.status is KeyStatus.PENDING_DESTRUCTION and v1.wrapped_key is not None
    assert (await kms.admin.maintenance([USERS_KEY])).keys_destroyed == 0  # the waiting period has not passed
    kms.clock.advance(timedelta(days=30, seconds=1))
    report = await kms.admin.maintenance([USERS_KEY])
    assert (report.keys_destroyed, report.destruction_scheduled, report.done) == (1, 0, True)
    v1 = await kms.repo.get_version(USERS_KEY, 1)
    assert v1 is not None and v1.status is KeyStatus.REVOKED and v1.wrapped_key is None
    for i, row in store.rows.items():
        for field, value in user_values(i).items():
            ciphertext = row[field]
            if value is None:
                assert ciphertext is None
                continue
            assert ciphertext is not None and kms.users.is_current(ciphertext, 2)
            assert await kms.users.decrypt(field, ciphertext, pii.user_context(i)) == value
    assert active_version(kms.repo, DEFAULT_KEY) == 1  # type: ignore[arg-type]


async def test_a_users_version_a_row_needs_again_is_not_destroyed(make_kms: MakeKms) -> None:
    store = FakeUsersPii()
    kms = await make_kms(users_pii=store, rotate_interval=timedelta(0)).open()
    await insert_users(kms, store, range(1, 4))
    backup = dict(store.rows[1])
    await kms.admin.rotate(USERS_KEY)
    report = await kms.admin.maintenance([USERS_KEY])
    assert (report.records_reencrypted, report.destruction_scheduled) == (3, 1)
    store.rows[99] = backup  # a row written under version 1 comes back (restored from a backup)
    kms.clock.advance(timedelta(days=31))
    report = await kms.admin.maintenance([USERS_KEY])
    # The restored row cannot move (version 1 refuses to decrypt while pending) and keeps version 1 alive.
    assert (report.keys_destroyed, report.records_failed, report.remaining) == (0, 1, 1)
    v1 = await kms.repo.get_version(USERS_KEY, 1)
    assert v1 is not None and v1.status is KeyStatus.PENDING_DESTRUCTION and v1.wrapped_key is not None


async def test_close_drops_key_material(kms: KmsStack) -> None:
    roots = [r.key for r in kms.ring._roots]
    await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    kms.cipher.blind_index(DEFAULT_KEY, "email", "a@b.example")
    await kms.ring.close()
    assert kms.ring._keys == {} and kms.ring._roots == [] and kms.ring._index_root is None
    assert kms.ring._sealers == {} and kms.ring._index_keys == {}
    assert roots and all(root.wiped for root in roots)


async def test_storage_outage_neither_stops_encryption_nor_hammers_storage(make_kms: MakeKms) -> None:
    from internal.biz.errors import Unavailable

    repo = CountingRepo(MemoryKeyRepo())
    kms = await make_kms(repo, rotate_after_encryptions=10, cache_recheck_interval=timedelta(seconds=0.2)).open()

    async def down(*_: object, **__: object) -> None:
        repo.calls.append("down")
        raise Unavailable("SERVICE_UNAVAILABLE", "storage down")

    for method in ("get_active", "add_encryption_counts", "key_states", "rotate"):
        setattr(repo.inner, method, down)
    repo.calls.clear()
    for _ in range(300):  # far past the rotation threshold: every call wakes the background task
        assert (await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).key_version == 1
        await asyncio.sleep(0.001)
    assert 1 <= repo.calls.count("down") <= 8, repo.calls


async def test_a_dry_run_reports_what_maintenance_would_do_and_changes_nothing(make_kms: MakeKms) -> None:
    kms = await make_kms(cache_recheck_interval=timedelta(seconds=30)).open()
    await kms.admin.create_key("orders", rotate_interval_seconds=3600)
    for _ in range(2):
        await kms.admin.rotate("orders")
    kms.clock.advance(timedelta(hours=2))  # versions 1 and 2 expired; the active version 3 is due
    dry = await kms.admin.maintenance(["orders"], dry_run=True)
    assert dry.dry_run and (dry.expired_marked, dry.rotated, dry.keys_destroyed) == (2, False, 0)
    versions = await kms.repo.list_versions("orders", status=None, before_version=None, limit=10)
    assert [(r.version, r.status) for r in versions] == [
        (3, KeyStatus.ACTIVE),
        (2, KeyStatus.INACTIVE),
        (1, KeyStatus.INACTIVE),
    ]
    report = await kms.admin.maintenance(["orders"])
    assert report.rotated and report.expired_marked == 3  # 1, 2 and the version 3 it just rotated away from


async def test_wire_sized_numbers_and_foreign_page_tokens_are_validation_errors(kms: KmsStack) -> None:
    """int64 seconds beyond what a timedelta holds, and page tokens that are no key name (a NUL cannot even reach
    PostgreSQL), are the caller's mistakes: VALIDATION_ERROR, never INTERNAL."""
    admin = kms.admin
    huge = 2**63 - 1
    await admin.rotate(DEFAULT_KEY)
    for call in (
        admin.create_key("wire.huge", rotate_interval_seconds=huge),
        admin.create_key("wire.huge", destruction_wait_seconds=-huge),
        admin.update_key(DEFAULT_KEY, rotate_interval_seconds=huge),
        admin.update_key(DEFAULT_KEY, destruction_wait_seconds=huge),
        admin.schedule_destruction(DEFAULT_KEY, 1, waiting_period_seconds=huge),
        admin.schedule_destruction(DEFAULT_KEY, 1, waiting_period_seconds=-huge),
        admin.list_keys(10, "a\x00", lambda _: True),
        admin.list_keys(10, "Not a key", lambda _: True),
        admin.list_keys(10, "x" * 65, lambda _: True),
    ):
        with pytest.raises(InvalidArgument) as exc:
            await call
        assert exc.value.reason == "VALIDATION_ERROR"
    assert (await admin.list_keys(10, DEFAULT_KEY, lambda _: True)).items == []  # `default` sorts last
    assert (await admin.get_key(DEFAULT_KEY)).policy.destruction_wait == timedelta(days=30)  # nothing changed
