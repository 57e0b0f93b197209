"""KMS administration: named keys and their policies, version queries, scheduled destruction and maintenance.

Destruction only on purpose (docs/operations.md "Keys, policies and destruction"): the KMS cannot know where
callers keep their ciphertexts, so nothing destroys a version of a caller's key by itself. An operator
schedules it with a waiting period (default 30 days, at least 7); while pending the version refuses to
decrypt with ``KEY_PENDING_DESTRUCTION``, so callers notice before anything is lost, and the destruction can
be cancelled. After the wait, maintenance destroys it. For the reserved users' key, whose every ciphertext
is in the users table, maintenance itself schedules a retired version once no row references it, and
destroys it after the same wait only if still no row does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from internal.biz import pii
from internal.biz.errors import Conflict, DomainError, FailedPrecondition, InvalidArgument
from internal.biz.kms import (
    KEY_NAME_PATTERN,
    MAX_DESCRIPTION_CHARS,
    MAX_DESTRUCTION_WAIT,
    MAX_REASON_CHARS,
    MIN_DESTRUCTION_WAIT,
    RETIRED,
    USERS_KEY,
    DataKeyRecord,
    KeyPolicy,
    KeySpec,
    KeyStatus,
    NamedKey,
    PolicyChange,
    is_reserved,
    key_name_or_default,
    key_not_found,
)
from internal.biz.kms_cipher import UsersPiiCipher
from internal.biz.kms_keyring import KeyRing, RekeyReport
from internal.pkg.kms.envelope import PREFIX_SIZE, algorithm_for_new_key, is_legacy, named_key_version

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_ROTATE_AFTER = 1 << 32  # AES-GCM with random nonces: stay below ~2^32 messages per key
_HASHED_FIELDS = (pii.EMAIL, pii.PHONE, pii.NAME)


@dataclass(frozen=True)
class KeyInfo:
    """Version metadata; never key material."""

    key_name: str
    id: str
    version: int
    algorithm: str
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    destroy_after: datetime | None
    encryption_count: int

    @classmethod
    def of(cls, record: DataKeyRecord, unflushed: int = 0) -> KeyInfo:
        return cls(
            key_name=record.key_name,
            id=record.id,
            version=record.version,
            algorithm=record.algorithm,
            status=record.status.value,
            created_at=record.created_at,
            updated_at=record.updated_at,
            expires_at=record.expires_at,
            destroy_after=record.destroy_after if record.status is KeyStatus.PENDING_DESTRUCTION else None,
            encryption_count=record.encryption_count + unflushed,
        )


@dataclass(frozen=True)
class NamedKeyInfo:
    name: str
    policy: KeyPolicy
    description: str
    reserved: bool
    active_version: int
    created_at: datetime
    updated_at: datetime


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True)
class KmsStatus:
    key_name: str
    initialized: bool
    algorithm: str
    rotate_interval_seconds: int
    active_version: int
    active_created_at: datetime | None
    active_expires_at: datetime | None
    active_encryption_count: int
    counts: dict[str, int]
    storage_type: str
    versions_under_previous_root: int
    root_key_fingerprint: str


@dataclass(frozen=True)
class MaintenanceProgress:
    target: str
    reencrypted: int
    failed: int
    skipped: int


@dataclass(frozen=True)
class MaintenanceReport:
    expired_marked: int
    records_reencrypted: int
    records_failed: int
    keys_destroyed: int
    destruction_scheduled: int
    remaining: int
    done: bool
    rotated: bool
    dry_run: bool


@dataclass(frozen=True)
class StoredPii:
    """One users row's PII ciphertexts (field → ciphertext or None), as read for re-encryption."""

    user_id: int
    values: Mapping[str, bytes | None]


@dataclass(frozen=True)
class ResealedPii:
    values: Mapping[str, bytes | None]  # new ciphertexts, same fields
    hashes: Mapping[str, str | None]  # recomputed blind indexes (rows from before the users' key), else empty
    lowest_version: int


class UsersPiiStore(Protocol):
    """The users table as maintenance sees it (``internal.data.users_pii.PgUsersPiiStore``)."""

    async def pending_count(self, active_version: int) -> int:
        """Rows with a value not yet under the users' key at ``active_version``."""
        ...

    async def pending(self, active_version: int, after_id: int, limit: int) -> list[StoredPii]: ...

    async def replace(self, changes: Sequence[tuple[StoredPii, ResealedPii]]) -> int:
        """Apply each change in one transaction, only where the row still holds the values read; the number
        applied."""
        ...

    async def ciphertext_prefixes(self, size: int) -> set[bytes]:
        """The distinct first ``size`` bytes of every stored PII ciphertext."""
        ...


def _seconds(value: timedelta | None) -> int:
    return int(value.total_seconds()) if value else 0


def _text(value: str, name: str, limit: int) -> str:
    """Free text bound for PostgreSQL: bounded and printable (no NUL, which text and jsonb cannot hold)."""
    if len(value) > limit or not value.isprintable():
        raise InvalidArgument("VALIDATION_ERROR", f"{name} must be at most {limit} printable characters")
    return value


def _duration(seconds: int, name: str, minimum: timedelta, maximum: timedelta) -> timedelta | None:
    if seconds == 0:
        return None
    # Compared as numbers first: an int64 from the wire can be far beyond what timedelta holds.
    if not minimum.total_seconds() <= seconds <= maximum.total_seconds():
        raise InvalidArgument(
            "VALIDATION_ERROR",
            f"{name} must be 0 (default) or between {int(minimum.total_seconds())} and "
            f"{int(maximum.total_seconds())} seconds",
        )
    return timedelta(seconds=seconds)


def _rotate_after(value: int) -> int | None:
    if value == 0:
        return None
    if not 0 < value <= MAX_ROTATE_AFTER:
        raise InvalidArgument(
            "VALIDATION_ERROR", f"rotate_after_encryptions must be 0 (default) or 1..{MAX_ROTATE_AFTER}"
        )
    return value


def parse_page_token(token: str) -> str:
    """A ListKeys page token: empty, or the key name the previous page ended with."""
    if token and not KEY_NAME_PATTERN.fullmatch(token):
        raise InvalidArgument("VALIDATION_ERROR", "invalid page_token")
    return token


class KeyAdmin:
    """Key administration use cases over the key ring and its repository."""

    def __init__(self, ring: KeyRing, users_cipher: UsersPiiCipher, users_pii: UsersPiiStore, batch_size: int) -> None:
        self._ring = ring
        self._repo = ring.repo
        self._users_cipher = users_cipher
        self._users_pii = users_pii
        self._batch_size = batch_size

    # ---- named keys --------------------------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        *,
        algorithm: str = "",
        rotate_interval_seconds: int = 0,
        rotate_after_encryptions: int = 0,
        destruction_wait_seconds: int = 0,
        description: str = "",
    ) -> NamedKeyInfo:
        """Create a named key with its first active version; KEY_EXISTS if the name is taken."""
        name = key_name_or_default(name)
        if is_reserved(name):
            raise InvalidArgument("VALIDATION_ERROR", "key names starting authkms. are reserved")
        spec = KeySpec(
            name=name,
            algorithm=algorithm_for_new_key(algorithm).value if algorithm else None,
            rotate_interval=_duration(
                rotate_interval_seconds, "rotate_interval_seconds", timedelta(hours=1), timedelta(days=3650)
            ),
            rotate_after_encryptions=_rotate_after(rotate_after_encryptions),
            destruction_wait=_duration(
                destruction_wait_seconds, "destruction_wait_seconds", MIN_DESTRUCTION_WAIT, MAX_DESTRUCTION_WAIT
            ),
            description=_text(description, "description", MAX_DESCRIPTION_CHARS),
        )
        _, created = await self._repo.create_key(spec)
        if not created:
            raise Conflict("KEY_EXISTS", "a key with that name already exists", {"key_name": name})
        await self._ring.rotate(name, "key created", trigger="create")  # tells the other replicas too
        await self._ring.audit("kms.key_create", "success", {"key_name": name})
        return await self.get_key(name)

    async def get_key(self, name: str) -> NamedKeyInfo:
        name = key_name_or_default(name)
        key = await self._repo.get_key(name)
        if key is None:
            raise key_not_found(name)
        return await self._named_info(key)

    async def _named_info(self, key: NamedKey) -> NamedKeyInfo:
        active = await self._repo.get_active(key.name)
        return NamedKeyInfo(
            name=key.name,
            policy=KeyPolicy.of(key, self._ring.defaults),
            description=key.description,
            reserved=key.reserved,
            active_version=active.version if active else 0,
            created_at=key.created_at,
            updated_at=key.updated_at,
        )

    async def list_keys(self, page_size: int, page_token: str, visible: Callable[[str], bool]) -> Page[NamedKeyInfo]:
        """Keys by name for which ``visible(name)`` holds, ``page_size`` (default 50, at most 500) per page."""
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        after = parse_page_token(page_token)
        shown: list[NamedKey] = []
        while len(shown) <= size:
            batch = await self._repo.list_keys(after, MAX_PAGE_SIZE)
            shown += [k for k in batch if visible(k.name)]
            if len(batch) < MAX_PAGE_SIZE:
                break
            after = batch[-1].name
        token = shown[size - 1].name if len(shown) > size else ""
        return Page([await self._named_info(k) for k in shown[:size]], token)

    async def update_key(
        self,
        name: str,
        *,
        rotate_interval_seconds: int = 0,
        rotate_after_encryptions: int = 0,
        destruction_wait_seconds: int = 0,
        description: str = "",
    ) -> NamedKeyInfo:
        """Change a key's policies; zero values leave a policy as it is. Every replica follows within the bound."""
        name = key_name_or_default(name)
        change = PolicyChange(
            rotate_interval=_duration(
                rotate_interval_seconds, "rotate_interval_seconds", timedelta(hours=1), timedelta(days=3650)
            ),
            rotate_after_encryptions=_rotate_after(rotate_after_encryptions),
            destruction_wait=_duration(
                destruction_wait_seconds, "destruction_wait_seconds", MIN_DESTRUCTION_WAIT, MAX_DESTRUCTION_WAIT
            ),
            description=_text(description, "description", MAX_DESCRIPTION_CHARS) or None,
        )
        key = await self._repo.update_key(name, change)
        if key is None:
            raise key_not_found(name)
        await self._ring.changed(name, "updated", 0)
        await self._ring.audit("kms.key_update", "success", {"key_name": name})
        return await self._named_info(key)

    # ---- versions ----------------------------------------------------------------------------------

    async def rotate(self, name: str, reason: str = "") -> KeyInfo:
        """Make a new active version; the previous one becomes decrypt-only."""
        name = key_name_or_default(name)
        reason = _text(reason, "reason", MAX_REASON_CHARS)
        return KeyInfo.of(await self._ring.rotate(name, reason or "manual rotation"))

    async def active_version(self, name: str) -> KeyInfo:
        name = key_name_or_default(name)
        _, _, record = await self._ring.describe(name)
        if record is None:
            raise FailedPrecondition("NO_ACTIVE_KEY", "the key has no active version", {"key_name": name})
        return KeyInfo.of(record, self._ring.unflushed(name, record.version))

    async def version(self, name: str, version: int) -> KeyInfo:
        name = key_name_or_default(name)
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise InvalidArgument("VALIDATION_ERROR", "version must be a positive integer")
        record = await self._repo.get_version(name, version)
        if record is None:
            await self._require_key(name)
            raise key_not_found(name, version)
        return KeyInfo.of(record, self._ring.unflushed(name, version))

    async def _require_key(self, name: str) -> None:
        if await self._repo.get_key(name) is None:
            raise key_not_found(name)

    async def list_versions(
        self, name: str, page_size: int = 0, page_token: str = "", status: str = ""
    ) -> Page[KeyInfo]:
        """Version metadata, newest first, ``page_size`` (default 50, at most 500) per page."""
        name = key_name_or_default(name)
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        before: int | None = None
        if page_token:
            if not (page_token.isascii() and page_token.isdigit()) or not 0 < int(page_token) <= 2**31:
                raise InvalidArgument("VALIDATION_ERROR", "invalid page_token")
            before = int(page_token)
        try:
            wanted = KeyStatus(status) if status else None
        except ValueError:
            names = ", ".join(s.value for s in KeyStatus)
            raise InvalidArgument("VALIDATION_ERROR", f"status must be one of {names}") from None
        await self._require_key(name)
        rows = await self._repo.list_versions(name, status=wanted, before_version=before, limit=size + 1)
        token = str(rows[size - 1].version) if len(rows) > size else ""
        return Page([KeyInfo.of(r, self._ring.unflushed(name, r.version)) for r in rows[:size]], token)

    async def status(self, name: str) -> KmsStatus:
        name = key_name_or_default(name)
        _, policy, record = await self._ring.describe(name)
        counts = await self._repo.statistics(name)
        return KmsStatus(
            key_name=name,
            initialized=self._ring.initialized and record is not None,
            algorithm=policy.algorithm,
            rotate_interval_seconds=_seconds(policy.rotate_interval),
            active_version=record.version if record else 0,
            active_created_at=record.created_at if record else None,
            active_expires_at=record.expires_at if record else None,
            active_encryption_count=(record.encryption_count + self._ring.unflushed(name, record.version))
            if record
            else 0,
            counts=counts,
            storage_type=self._repo.kind,
            versions_under_previous_root=self._ring.under_previous_root(await self._repo.all_versions()),
            root_key_fingerprint=self._ring.root_fingerprint,
        )

    async def users_pending(self) -> int:
        """Users rows with PII not yet under the users' key's active version (what maintenance still moves)."""
        active = await self._ring.load_active(USERS_KEY)
        return await self._users_pii.pending_count(active.version)

    async def users_versions_in_use(self) -> set[int]:
        """Every version of the users' key some stored value still needs (format 1 values need ``default``)."""
        prefixes = await self._users_pii.ciphertext_prefixes(PREFIX_SIZE)
        return {v for prefix in prefixes if (v := named_key_version(prefix)) is not None}

    async def rekey(self, batch_size: int = 0, progress: Callable[[int, int], None] | None = None) -> RekeyReport:
        """Re-wrap what is still under the previous root key under the current one (docs/operations.md)."""
        if batch_size < 0 or batch_size > 100_000:
            raise InvalidArgument("VALIDATION_ERROR", "batch_size must be between 0 (all) and 100000")
        return await self._ring.rekey(batch_size, progress)

    # ---- destruction -------------------------------------------------------------------------------

    async def schedule_destruction(self, name: str, version: int, waiting_period_seconds: int = 0) -> KeyInfo:
        """Schedule the destruction of a retired version; it refuses to decrypt until cancelled or destroyed."""
        name = key_name_or_default(name)
        _, policy, active = await self._ring.describe(name)
        wait = _duration(waiting_period_seconds, "waiting_period_seconds", MIN_DESTRUCTION_WAIT, MAX_DESTRUCTION_WAIT)
        record = await self._scheduled(name, version, wait or policy.destruction_wait, active)
        await self._ring.audit(
            "kms.key_destroy_schedule",
            "success",
            {"key_name": name, "version": version, "wait_s": _seconds(wait or policy.destruction_wait)},
        )
        return KeyInfo.of(record)

    async def _scheduled(self, name: str, version: int, wait: timedelta, active: DataKeyRecord | None) -> DataKeyRecord:
        current = await self.version(name, version)
        if active is not None and version == active.version:
            raise FailedPrecondition(
                "KEY_STATE_INVALID",
                "the active version cannot be destroyed; rotate the key first",
                {"status": "active"},
            )
        record = await self._repo.schedule_destruction(name, version, self._ring.clock() + wait)
        if record is None:
            raise FailedPrecondition(
                "KEY_STATE_INVALID",
                "only a retired version can be scheduled for destruction",
                {"status": current.status},
            )
        await self._ring.changed(name, "destruction_scheduled", version)
        log.info("kms: key version destruction scheduled", extra={"key_name": name, "key_version": version})
        return record

    async def cancel_destruction(self, name: str, version: int) -> KeyInfo:
        """Cancel a pending destruction; the version decrypts again."""
        name = key_name_or_default(name)
        current = await self.version(name, version)
        record = await self._repo.cancel_destruction(name, version)
        if record is None:
            raise FailedPrecondition(
                "KEY_STATE_INVALID", "that version is not scheduled for destruction", {"status": current.status}
            )
        await self._ring.changed(name, "destruction_cancelled", version)
        await self._ring.audit("kms.key_destroy_cancel", "success", {"key_name": name, "version": version})
        return KeyInfo.of(record)

    # ---- maintenance -------------------------------------------------------------------------------

    async def maintenance(
        self,
        names: Collection[str],
        batch_size: int = 0,
        dry_run: bool = False,
        progress: Callable[[MaintenanceProgress], None] | None = None,
    ) -> MaintenanceReport:
        """For each key: rotate if due, mark expired versions, destroy versions whose scheduled destruction is due.
        For the users' key also: re-encrypt users' PII onto its active version (at most ``batch_size`` rows this
        call, each batch committed) and schedule the destruction of versions no row needs. Call until ``done``."""
        budget = batch_size if batch_size > 0 else self._batch_size
        now = self._ring.clock()
        expired = destroyed = scheduled = 0
        rotated = False
        reencrypted = failed = remaining = 0
        for name in names:
            if not dry_run and self._ring.rotation_due(name):
                await self._ring.rotate(name, "due at maintenance", trigger="maintenance")
                rotated = True
            expired += await self._expire(name, now, dry_run)
            destroyed += await self._destroy_due(name, now, dry_run)
        if USERS_KEY in names:
            reencrypted, failed, remaining = await self._move_users_pii(budget, dry_run, progress)
            if remaining == 0:
                scheduled = await self._schedule_unreferenced(now, dry_run)
        report = MaintenanceReport(
            expired_marked=expired,
            records_reencrypted=reencrypted,
            records_failed=failed,
            keys_destroyed=destroyed,
            destruction_scheduled=scheduled,
            remaining=remaining,
            done=remaining == 0,
            rotated=rotated,
            dry_run=dry_run,
        )
        details: dict[str, str | int | bool] = {
            "keys": ",".join(sorted(names))[:200],  # also the log line below, which nothing else bounds
            "dry_run": dry_run,
            "expired_marked": expired,
            "records_reencrypted": reencrypted,
            "records_failed": failed,
            "keys_destroyed": destroyed,
            "destruction_scheduled": scheduled,
            "remaining": remaining,
        }
        log.info("kms maintenance", extra=details)
        await self._ring.audit("kms.maintenance", "success", details)
        return report

    async def _expire(self, name: str, now: datetime, dry_run: bool) -> int:
        """Mark inactive versions past their expiry as expired (a dry run counts them)."""
        if not dry_run:
            return len(await self._repo.mark_expired(name, now))
        inactive = await self._repo.list_versions(
            name, status=KeyStatus.INACTIVE, before_version=None, limit=MAX_PAGE_SIZE
        )
        return sum(r.expires_at is not None and r.expires_at <= now for r in inactive)

    async def _destroy_due(self, name: str, now: datetime, dry_run: bool) -> int:
        pending = await self._repo.list_versions(
            name, status=KeyStatus.PENDING_DESTRUCTION, before_version=None, limit=MAX_PAGE_SIZE
        )
        due = [r for r in pending if r.destroy_after is not None and r.destroy_after <= now]
        if name == USERS_KEY and due:
            in_use = await self.users_versions_in_use()
            due = [r for r in due if r.version not in in_use]  # a row needs it after all: keep it pending
        if dry_run:
            return len(due)
        destroyed = 0
        for record in due:
            if not await self._repo.destroy(name, record.version, now):
                continue
            destroyed += 1
            log.info("kms: key version destroyed", extra={"key_name": name, "key_version": record.version})
            await self._ring.changed(name, "destroyed", record.version)
            await self._ring.audit("kms.key_destroy", "success", {"key_name": name, "version": record.version})
        return destroyed

    async def _schedule_unreferenced(self, now: datetime, dry_run: bool) -> int:
        """Retired versions of the users' key that no users row references get a scheduled destruction."""
        _, policy, _ = await self._ring.describe(USERS_KEY)
        in_use = await self.users_versions_in_use()
        retired: list[DataKeyRecord] = []
        for status in RETIRED:
            retired += await self._repo.list_versions(
                USERS_KEY, status=status, before_version=None, limit=MAX_PAGE_SIZE
            )
        candidates = [r for r in retired if r.version not in in_use]
        if dry_run:
            return len(candidates)
        for record in candidates:
            await self._repo.schedule_destruction(USERS_KEY, record.version, now + policy.destruction_wait)
            await self._ring.changed(USERS_KEY, "destruction_scheduled", record.version)
            await self._ring.audit(
                "kms.key_destroy_schedule",
                "success",
                {"key_name": USERS_KEY, "version": record.version, "by": "maintenance"},
            )
        return len(candidates)

    async def _move_users_pii(
        self, budget: int, dry_run: bool, progress: Callable[[MaintenanceProgress], None] | None
    ) -> tuple[int, int, int]:
        active = (await self._ring.load_active(USERS_KEY)).version
        reencrypted = failed = skipped = 0
        after = 0
        while budget > 0 and not dry_run:
            rows = await self._users_pii.pending(active, after, min(budget, self._batch_size))
            if not rows:
                break
            changes: list[tuple[StoredPii, ResealedPii]] = []
            for row in rows:
                resealed = await self._reseal(row, active)
                if resealed is None:
                    failed += 1
                else:
                    changes.append((row, resealed))
            applied = await self._users_pii.replace(changes)
            reencrypted += applied
            skipped += len(changes) - applied
            budget -= len(rows)
            after = rows[-1].user_id
            if progress is not None:
                progress(MaintenanceProgress("users.pii", reencrypted, failed, skipped))
        return reencrypted, failed, await self._users_pii.pending_count(active)

    async def _reseal(self, row: StoredPii, active: int) -> ResealedPii | None:
        """The row's values under the users' key's active version (and fresh blind indexes if it predates the
        users' key), or None if some value does not decrypt (the row is left as is and logged by id)."""
        context = pii.user_context(row.user_id)
        values: dict[str, bytes | None] = {}
        plaintexts: dict[str, str] = {}
        versions: list[int] = []
        legacy = False
        for field, old in row.values.items():
            if old is None:
                values[field] = None
                continue
            try:
                if self._users_cipher.is_current(old, active):
                    values[field] = old
                    versions.append(active)
                    continue
                legacy = legacy or is_legacy(old)
                plaintext = await self._users_cipher.decrypt(field, old, context)
                sealed = await self._users_cipher.encrypt(field, plaintext, context)
            except (DomainError, UnicodeDecodeError) as exc:
                log.warning(
                    "kms re-encryption: value does not decrypt; row left as is",
                    extra={"user_id": row.user_id, "field": field, "reason": getattr(exc, "reason", "UTF8")},
                )
                return None
            if field in _HASHED_FIELDS:
                plaintexts[field] = plaintext.decode()
            values[field] = sealed.ciphertext
            versions.append(sealed.key_version)
        hashes: dict[str, str | None] = {}
        if legacy:
            hashes = {f: self._users_cipher.blind_index(f, v) for f, v in plaintexts.items()}
        return ResealedPii(values, hashes, min(versions, default=active))
