"""Adopting the Go service's database in place (``migrate adopt``; docs/operations.md "Moving from the Go service").

The Go service kept users' PII as ``<version>:<algorithm>:<hex>`` values under its own data keys (wrapped by a
root key from its hardcoded KMS settings) and plain SHA-256 hashes for lookups. Adoption:

1. opens every one of its data keys with the source settings, and every stored value with those keys, before
   anything changes; one that does not open refuses the whole run (nothing is lost, nothing half-done);
2. has the store move its tables aside and build our schema in one transaction (``GoSource.convert_schema``);
3. moves users in batches: each value re-encrypted under the users' key bound to its row and field
   (docs/security.md item 1), each plain hash replaced by our keyed blind index (item 6); ids, usernames and
   bcrypt hashes are kept (docs/security.md "Passwords"). A batch is one transaction that also deletes the rows
   it moved from the Go table, so a killed run resumes exactly where it stopped;
4. once nothing is left, drops the Go tables and with them its data keys, which then protect nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from internal.biz import identifiers, pii
from internal.biz.errors import DomainError
from internal.biz.ports import AuditLog
from internal.pkg.kms.legacy_go import (
    GoKeyring,
    GoSettings,
    LegacyFormatError,
    derive_go_root_key,
    unwrap_go_data_key,
    version_names,
)

# The PII columns the Go service wrote, by the field name our envelopes bind them to.
GO_FIELDS = (pii.EMAIL, pii.PHONE, pii.NAME)
DEFAULT_BATCH = 500


class Stage:
    GO = "go"  # the Go service's tables, untouched
    MOVING = "moving"  # our schema is in place; Go rows still wait in the side schema
    DONE = "done"  # nothing of the Go service left


@dataclass(frozen=True)
class GoKeyRow:
    id: str
    version: int
    encrypted_key: bytes = field(repr=False)
    metadata: dict[str, object] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class GoUser:
    id: int
    username: str
    password_hash: str = field(repr=False)
    values: dict[str, bytes | None] = field(repr=False)  # field -> the Go service's stored value
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class AdoptedUser:
    id: int
    username: str
    password_hash: str = field(repr=False)
    values: dict[str, bytes | None] = field(repr=False)  # field -> our envelope
    hashes: dict[str, str | None] = field(repr=False)  # field -> our blind index (None: not indexable)
    key_version: int | None  # lowest version of the users' key among the row's values
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class MoveOutcome:
    moved: int
    unindexed: int  # blind indexes left out because an older row already holds the same one


class GoSource(Protocol):
    """The Go service's database as adoption sees it (``internal.data.adopt.PgGoSource``)."""

    async def stage(self) -> str: ...

    async def go_keys(self) -> list[GoKeyRow]: ...

    async def username_problems(self) -> list[str]:
        """Why some usernames cannot be kept as they are (by row id; never the names themselves)."""
        ...

    async def convert_schema(self) -> int:
        """Move the Go tables aside and create ours, in one transaction; returns our schema version."""
        ...

    async def pending_count(self) -> int: ...

    async def pending(self, after_id: int, limit: int) -> list[GoUser]: ...

    async def move(self, users: Sequence[AdoptedUser]) -> MoveOutcome:
        """Insert ``users`` into our table and delete them from the Go one, in one transaction."""
        ...

    async def finish(self) -> bool:
        """Drop the Go tables once no row is left in them; False if some still are."""
        ...


@dataclass
class AdoptReport:
    stage_before: str
    converted: bool = False
    schema_version: int | None = None
    moved: int = 0
    unindexed: int = 0  # identifiers that got no blind index (not a valid address/number, or already taken)
    remaining: int = 0
    keys_retired: int = 0
    finished: bool = False
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.moved / self.seconds if self.seconds > 0 else 0.0


class AdoptRefused(Exception):
    """Adoption cannot go on. An operator's error, never a client's: the message names the cause and row ids,
    never values or keys."""


def refused(message: str) -> AdoptRefused:
    return AdoptRefused(message + "; nothing was changed")


async def open_go_keys(source: GoSource, settings: GoSettings) -> GoKeyring:
    """Every Go data key, opened under the source settings, or AdoptRefused naming how many do not open."""
    try:
        settings.check()
    except LegacyFormatError as exc:
        raise refused(str(exc)) from None
    rows = await source.go_keys()
    root = await asyncio.to_thread(derive_go_root_key, settings)
    ring = GoKeyring()
    bad: list[str] = []
    for row in rows:
        try:
            material = unwrap_go_data_key(root, row.encrypted_key)
        except LegacyFormatError:
            bad.append(row.id)
            continue
        ring.add(row.id, version_names(row.version, row.metadata), material)
    if bad:
        ring.drop()
        raise refused(
            f"{len(bad)} of the Go service's {len(rows)} data keys do not open under the source settings "
            "(--source-seed/--source-seed-file, --source-salt, --source-iterations: the values of its KMS "
            "configuration, by default the ones it hardcodes)"
        )
    return ring


class GoAdoption:
    """Checks, converts and moves; every step may be repeated (idempotent) and resumed after a kill."""

    def __init__(self, source: GoSource, keys: GoKeyring, *, batch_size: int = DEFAULT_BATCH) -> None:
        self._source = source
        self._keys = keys
        self._batch = max(1, batch_size)

    def _open(self, user: GoUser, name: str, stored: bytes) -> bytes:
        try:
            return self._keys.open(stored)
        except LegacyFormatError as exc:
            raise AdoptRefused(f"users row {user.id}, {name}: {exc}") from None

    async def check(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Before any change: every username can be kept, and every stored value opens. Returns rows checked."""
        problems = await self._source.username_problems()
        if problems:
            shown = "; ".join(problems[:10]) + ("; …" if len(problems) > 10 else "")
            raise refused(f"usernames this service cannot keep as they are: {shown}")
        total, checked, after = await self._source.pending_count(), 0, 0
        while rows := await self._source.pending(after, self._batch):
            for user in rows:
                for name, stored in user.values.items():
                    if stored is not None:
                        try:
                            self._open(user, name, stored)
                        except AdoptRefused as exc:
                            raise refused(str(exc)) from None
            checked += len(rows)
            after = rows[-1].id
            if progress is not None:
                progress(checked, total)
        return checked

    async def convert(self) -> int:
        return await self._source.convert_schema()

    async def _adopt(self, user: GoUser, cipher: pii.FieldCipher) -> tuple[AdoptedUser, int]:
        context = pii.user_context(user.id)
        values: dict[str, bytes | None] = {}
        hashes: dict[str, str | None] = {}
        versions: list[int] = []
        unindexed = 0
        for name in GO_FIELDS:
            stored = user.values.get(name)
            plaintext = self._open(user, name, stored) if stored is not None else b""
            if not plaintext:
                values[name] = hashes[name] = None
                continue
            try:
                # Stored as registration stores it (the one normaliser), with its blind index.
                text = identifiers.normalize_index_value(name, plaintext.decode())
            except (DomainError, UnicodeDecodeError):
                # Kept, encrypted, as it was; it identifies nobody (not a valid address or E.164 number).
                sealed = await cipher.encrypt(name, plaintext, context)
                values[name], hashes[name] = sealed.ciphertext, None
                versions.append(sealed.key_version)
                unindexed += name != pii.NAME
                continue
            indexed = await pii.seal_indexed(cipher, name, text, context)
            values[name], hashes[name] = indexed.ciphertext, indexed.blind_index
            versions.append(indexed.key_version)
        adopted = AdoptedUser(
            user.id,
            user.username,
            user.password_hash,
            values,
            hashes,
            min(versions) if versions else None,
            user.created_at,
            user.updated_at,
        )
        return adopted, unindexed

    async def move_all(
        self,
        cipher: pii.FieldCipher,
        audit: AuditLog,
        progress: Callable[[int, int], None] | None = None,
        limit: int = 0,
    ) -> AdoptReport:
        """Move every waiting user (at most ``limit``, 0: all), then retire the Go tables if none is left."""
        started = time.monotonic()
        report = AdoptReport(Stage.MOVING)
        total = await self._source.pending_count()
        todo = min(total, limit) if limit > 0 else total
        after = 0
        while report.moved < todo:
            rows = await self._source.pending(after, min(self._batch, todo - report.moved))
            if not rows:
                break
            batch: list[AdoptedUser] = []
            for user in rows:
                adopted, unindexed = await self._adopt(user, cipher)
                batch.append(adopted)
                report.unindexed += unindexed
            outcome = await self._source.move(batch)
            report.moved += outcome.moved
            report.unindexed += outcome.unindexed
            after = rows[-1].id
            if progress is not None:
                progress(report.moved, todo)
        report.remaining = await self._source.pending_count()
        if report.remaining == 0:
            report.keys_retired = len(self._keys.ids)
            report.finished = await self._source.finish()
        report.seconds = time.monotonic() - started
        await audit.record(
            "migrate.adopt",
            "success" if report.finished else "partial",
            actor="cli",
            details={
                "moved": report.moved,
                "remaining": report.remaining,
                "unindexed": report.unindexed,
                "go_keys_retired": report.keys_retired,
            },
        )
        if report.finished:
            self._keys.drop()
        return report
