"""The adoption use case on fakes: batches and limits, what a moved row holds, the audit record, refusals."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from internal.biz import pii
from internal.biz.adopt import AdoptedUser, AdoptRefused, GoAdoption, GoKeyRow, GoUser, MoveOutcome, Stage, open_go_keys
from internal.pkg.kms.legacy_go import GoSettings, LegacyFormatError
from tests.integration.adopt.go_service import GoKey, go_root_key, go_seal
from tests.unit.auth.fakes import FakeAudit, FakeCipher

SETTINGS = GoSettings(iterations=10_000)


def wrap(root: bytes, material: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(root).encrypt(nonce, material, None)


class FakeGoSource:
    def __init__(self, users: list[GoUser], keys: list[GoKeyRow]) -> None:
        self.waiting = {u.id: u for u in users}
        self.moved: dict[int, AdoptedUser] = {}
        self.keys = keys
        self.batches: list[int] = []
        self.finished = False

    async def stage(self) -> str:
        return Stage.MOVING

    async def go_keys(self) -> list[GoKeyRow]:
        return self.keys

    async def username_problems(self) -> list[str]:
        return []

    async def convert_schema(self) -> int:
        return 9

    async def pending_count(self) -> int:
        return len(self.waiting)

    async def pending(self, after_id: int, limit: int) -> list[GoUser]:
        return [self.waiting[i] for i in sorted(self.waiting) if i > after_id][:limit]

    async def move(self, users: Sequence[AdoptedUser]) -> MoveOutcome:
        self.batches.append(len(users))
        for user in users:
            self.moved[user.id] = user
            del self.waiting[user.id]
        return MoveOutcome(len(users), 0)

    async def finish(self) -> bool:
        self.finished = not self.waiting
        return self.finished


def world(n: int = 5) -> tuple[FakeGoSource, GoKey]:
    root = go_root_key(iterations=SETTINGS.iterations)
    key = GoKey(4, os.urandom(32), "v4")
    users = [
        GoUser(
            10 + i,
            f"user{i}",
            "$2a$10$" + "x" * 53,
            {
                pii.EMAIL: go_seal(key, f"  User{i}@Example.COM "),
                pii.PHONE: go_seal(key, "+86 138 0013 800" + str(i) if i else "13800138000"),
                pii.NAME: go_seal(key, f" Name {i} ") if i != 2 else None,
            },
        )
        for i in range(n)
    ]
    return FakeGoSource(users, [GoKeyRow("id-4", 4, wrap(root, key.material))]), key


async def test_batches_limits_and_what_a_moved_row_holds() -> None:
    source, _ = world()
    keys = await open_go_keys(source, SETTINGS)
    adoption = GoAdoption(source, keys, batch_size=2)
    cipher, audit = FakeCipher(key_version=7), FakeAudit()
    seen: list[tuple[int, int]] = []

    first = await adoption.move_all(cipher, audit, lambda done, todo: seen.append((done, todo)), limit=3)
    assert (first.moved, first.remaining, first.finished) == (3, 2, False)
    assert source.batches == [2, 1] and seen == [(2, 3), (3, 3)]
    second = await adoption.move_all(cipher, audit)
    assert (second.moved, second.remaining, second.finished, second.keys_retired) == (2, 0, True, 1)
    assert source.finished

    row = source.moved[11]
    context = pii.user_context(11)
    assert await cipher.decrypt(pii.EMAIL, row.values[pii.EMAIL] or b"", context) == b"user1@example.com"
    assert await cipher.decrypt(pii.PHONE, row.values[pii.PHONE] or b"", context) == b"+8613800138001"
    assert await cipher.decrypt(pii.NAME, row.values[pii.NAME] or b"", context) == b"Name 1"
    assert row.hashes[pii.EMAIL] == cipher.blind_index(pii.EMAIL, "user1@example.com")
    assert (row.username, row.password_hash, row.key_version) == ("user1", "$2a$10$" + "x" * 53, 7)
    # No country code: kept as it was, encrypted, but without a blind index.
    assert source.moved[10].hashes[pii.PHONE] is None and first.unindexed == 1
    assert await cipher.decrypt(pii.PHONE, source.moved[10].values[pii.PHONE] or b"", pii.user_context(10)) == (
        b"13800138000"
    )
    assert source.moved[12].values[pii.NAME] is None and source.moved[12].hashes[pii.NAME] is None

    assert [(e["event"], e["outcome"]) for e in audit.events] == [
        ("migrate.adopt", "partial"),
        ("migrate.adopt", "success"),
    ]
    assert audit.events[1]["details"] == {"moved": 2, "remaining": 0, "unindexed": 0, "go_keys_retired": 1}
    with pytest.raises(LegacyFormatError):  # the Go keys are dropped from memory once retired
        keys.open(source.moved[10].values[pii.EMAIL] or b"")


async def test_a_key_that_does_not_open_refuses_and_names_no_secret() -> None:
    source, _ = world(1)
    stranger = wrap(os.urandom(32), os.urandom(32))
    source.keys.append(GoKeyRow("id-9", 9, stranger))
    with pytest.raises(AdoptRefused, match="1 of the Go service's 2 data keys do not open") as refused:
        await open_go_keys(source, SETTINGS)
    assert "default-seed-value" not in str(refused.value) and "nothing was changed" in str(refused.value)
    with pytest.raises(AdoptRefused, match="at least 10000"):
        await open_go_keys(source, GoSettings(iterations=1000))


async def test_a_value_under_an_unknown_version_stops_the_check_naming_row_and_field() -> None:
    source, _ = world(2)
    other = GoKey(5, os.urandom(32), "5")
    source.waiting[11] = GoUser(11, "user1", "h", {pii.EMAIL: go_seal(other, "a@example.com")})
    adoption = GoAdoption(source, await open_go_keys(source, SETTINGS))
    with pytest.raises(AdoptRefused, match=r"users row 11, email: .*not in kms_data_keys; nothing was changed"):
        await adoption.check()
    assert not source.moved
