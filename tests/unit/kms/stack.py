"""The KMS as the container builds it (key ring, cipher, users' PII cipher, admin), for tests.

``build_kms`` wires the real biz objects over any ``KeyRepo``: ``MemoryKeyRepo`` in unit tests, PostgreSQL or
the file in integration tests. ``FakeClock`` is the ring's injected clock (destruction dates, expiry, due
rotations); ``FakeUsersPii`` is the users table as maintenance sees it, in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from internal.biz import pii
from internal.biz.kms import KeyDefaults, KeyEvents, KeyRepo, NoKeyEvents
from internal.biz.kms_admin import KeyAdmin, ResealedPii, StoredPii, UsersPiiStore
from internal.biz.kms_cipher import KmsCipher, UsersPiiCipher
from internal.biz.kms_keyring import KeyRing, RootKeySource
from internal.biz.ports import AuditLog
from internal.conf.config import Kms
from internal.pkg.kms.envelope import ALGORITHM_IDS, MAGIC, NONCE_SIZE, DataKey, associated_data, parse_header
from tests.unit.auth.fakes import FakeAudit


def kms_config(**overrides: Any) -> Kms:
    values: dict[str, Any] = {"iterations": 10_000, "cache_recheck_interval": timedelta(seconds=0.05)}
    values.update(overrides)
    return Kms(**values)


class FakeClock:
    """The ring's clock: real time until a test moves it."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


class FakeUsersPii:
    """``UsersPiiStore`` over a dict: user id → (field → ciphertext or None)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, bytes | None]] = {}
        self.hashes: dict[int, dict[str, str | None]] = {}

    @staticmethod
    def lowest_version(values: Mapping[str, bytes | None]) -> int:
        versions = [parse_header(v).key_version for v in values.values() if v is not None]
        return min(versions, default=0)

    async def pending_count(self, active_version: int) -> int:
        return sum(self.lowest_version(v) < active_version for v in self.rows.values())

    async def pending(self, active_version: int, after_id: int, limit: int) -> list[StoredPii]:
        ids = sorted(i for i, v in self.rows.items() if i > after_id and self.lowest_version(v) < active_version)
        return [StoredPii(i, dict(self.rows[i])) for i in ids[:limit]]

    async def replace(self, changes: Sequence[tuple[StoredPii, ResealedPii]]) -> int:
        applied = 0
        for old, new in changes:
            if self.rows.get(old.user_id) == dict(old.values):
                self.rows[old.user_id] = dict(new.values)
                self.hashes.setdefault(old.user_id, {}).update({f: h for f, h in new.hashes.items() if h})
                applied += 1
        return applied

    async def ciphertext_prefixes(self, size: int) -> set[bytes]:
        return {c[:size] for row in self.rows.values() for c in row.values() if c is not None}


@dataclass
class KmsStack:
    ring: KeyRing
    cipher: KmsCipher
    users: UsersPiiCipher
    admin: KeyAdmin
    repo: KeyRepo
    events: KeyEvents
    audit: AuditLog
    clock: FakeClock

    async def open(self) -> KmsStack:
        await self.ring.open()
        return self

    async def close(self) -> None:
        await self.ring.close()


def build_kms(
    repo: KeyRepo,
    *,
    seed: str,
    salt: str,
    config: Kms | None = None,
    events: KeyEvents | None = None,
    audit: AuditLog | None = None,
    users_pii: UsersPiiStore | None = None,
    clock: FakeClock | None = None,
    algorithm: str | None = None,
    previous_seed: str = "",
    previous_salt: str = "",
) -> KmsStack:
    """The key ring, ciphers and admin exactly as ``internal.container`` wires them (not opened yet)."""
    conf = config or kms_config()
    clock = clock or FakeClock()
    events = events or NoKeyEvents()
    audit = audit or FakeAudit()
    ring = KeyRing(
        repo,
        RootKeySource(seed, salt, conf.iterations, conf.key_length, previous_seed, previous_salt),
        KeyDefaults(algorithm or conf.algorithm, conf.rotate_interval, conf.rotate_after_encryptions),
        events=events,
        audit=audit,
        recheck=conf.cache_recheck_interval,
        clock=clock,
    )
    cipher = KmsCipher(ring, max_plaintext_bytes=conf.max_plaintext_bytes, max_batch_items=conf.max_batch_items)
    users = UsersPiiCipher(cipher)
    admin = KeyAdmin(ring, users, users_pii or FakeUsersPii(), conf.maintenance_batch_size)
    return KmsStack(ring, cipher, users, admin, repo, events, audit, clock)


async def until(predicate: Callable[[], object], within: float = 2.0) -> None:
    """Poll a condition that changes in background tasks (fails with TimeoutError after ``within``)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the state lives in another component, no event to wait on
            await asyncio.sleep(0.01)


class CountingRepo:
    """Wraps a KeyRepo and counts every call, to prove the steady state makes none."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attr(*args, **kwargs)

        return counted


def user_values(i: int) -> dict[str, bytes | None]:
    """The PII of test user ``i`` (some fields empty, as real rows have)."""
    return {
        pii.EMAIL: f"user{i}@example.com".encode(),
        pii.PHONE: f"+86138000000{i:02d}".encode() if i % 2 == 0 else None,
        pii.NAME: f"User {i}".encode() if i % 3 == 0 else None,
        pii.TOTP_SECRET: b"JBSWY3DPEHPK3PXP" if i % 4 == 0 else None,
    }


def replace_record(repo: Any, name: str, version: int, **changes: Any) -> None:
    """Edit a stored version of a ``MemoryKeyRepo`` in place (what an UPDATE does on PostgreSQL)."""
    slot = (name, version)
    repo.set.versions[slot] = dataclasses.replace(repo.set.versions[slot], **changes)


def seal_legacy(key: DataKey, field: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
    """A format 1 envelope, as the service sealed them before named keys (no key name in the associated data)."""
    prefix = struct.pack(">BBIB", MAGIC, 1, key.version, ALGORITHM_IDS[key.algorithm])
    nonce = os.urandom(NONCE_SIZE)
    return prefix + nonce + key._seal(nonce, plaintext, associated_data(prefix, None, field, context))
