"""The KMS manager: root key, data-key lifecycle, the in-memory key cache and its invalidation.

Lifecycle
  * ``initialize()`` derives the root key (in a thread), proves it unwraps every stored data key (or
    refuses to start: it never creates a key over unreadable ones), creates the first key on an empty
    store, rotates an active key that is already due, subscribes to key events and starts the
    background task.
  * The background task runs every ``cache_recheck_interval`` (and sooner when an encryption notices
    the active key is due): it flushes in-memory encryption counts, reads the stored active key (one
    query per interval, never per call), reloads the cache if another replica rotated, and rotates when
    the active key is older than ``rotate_interval``, past ``expires_at``, or has been used for
    ``rotate_after_encryptions`` encryptions. Only one replica's rotation wins (storage semantics).
  * Encryption never fails because the active key is due: it keeps using the current key and asks the
    background task to rotate.

Invalidation bound: a replica stops encrypting with a key another replica retired within the pub/sub
latency (milliseconds), at worst within ``cache_recheck_interval`` (default 5 s) when pub/sub is lost.
Retired keys stay decrypt-only; ``maintenance()`` destroys a key only once it is expired, retired for
longer than ``destroy_grace`` (so no replica still encrypts with it) and no re-encryption target reports
a stored value under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from internal.biz.errors import FailedPrecondition, InvalidArgument, NotFound
from internal.conf.config import Kms
from internal.pkg.kms import audit
from internal.pkg.kms.audit import AuditSink, NoopAuditSink, record_safely
from internal.pkg.kms.crypto import CryptoService
from internal.pkg.kms.datakey import KeyUnwrapError, KeyWrapper, new_material
from internal.pkg.kms.envelope import Algorithm, DataKey, algorithm_for_new_key
from internal.pkg.kms.events import KeyEvent, KeyEvents, NoopKeyEvents, cancel_and_wait
from internal.pkg.kms.rootkey import RootKey, derive_root_key_async
from internal.pkg.kms.storage import (
    ROTATION_REASON,
    DataKeyRecord,
    KeyStatus,
    KeyStorage,
    NewDataKey,
)
from internal.pkg.kms.targets import ReencryptionTarget

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MIN_DESTROY_GRACE = timedelta(minutes=5)
_MIN_TICK_GAP_SECONDS = 0.05
_MAX_REASON_CHARS = 200


class RootKeyMismatch(Exception):
    """The configured root key cannot unwrap the stored data keys: refuse to start."""


@dataclass(frozen=True)
class KeyInfo:
    """Data-key metadata; never key material."""

    id: str
    version: int
    algorithm: str
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    encryption_count: int

    @classmethod
    def of(cls, record: DataKeyRecord, unflushed: int = 0) -> KeyInfo:
        return cls(
            id=record.id,
            version=record.version,
            algorithm=record.algorithm,
            status=record.status.value,
            created_at=record.created_at,
            updated_at=record.updated_at,
            expires_at=record.expires_at,
            encryption_count=record.encryption_count + unflushed,
        )


@dataclass(frozen=True)
class KeyPage:
    keys: list[KeyInfo]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True)
class KmsStatus:
    initialized: bool
    algorithm: str
    rotate_interval_seconds: int
    active_version: int
    active_created_at: datetime | None
    active_expires_at: datetime | None
    active_encryption_count: int
    counts: dict[str, int]
    storage_type: str


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
    remaining: int
    done: bool
    rotated: bool
    dry_run: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _not_initialized() -> FailedPrecondition:
    return FailedPrecondition("KMS_NOT_INITIALIZED", "the KMS is not initialized")


def _key_not_found(version: int) -> NotFound:
    return NotFound("KEY_NOT_FOUND", "no usable data key with that version", {"key_version": str(version)})


class KMSManager:
    """Owns the key cache; ``crypto`` is the FieldCipher the rest of the service uses."""

    def __init__(
        self,
        config: Kms,
        storage: KeyStorage,
        *,
        seed: str,
        salt: str,
        events: KeyEvents | None = None,
        audit_sink: AuditSink | None = None,
        targets: Sequence[ReencryptionTarget] = (),
        destroy_grace: timedelta | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.events: KeyEvents = events or NoopKeyEvents()
        self.targets = list(targets)
        self.instance_id = uuid.uuid4().hex[:12]
        self._seed = seed
        self._salt = salt
        self._audit: AuditSink = audit_sink or NoopAuditSink()
        self._recheck = max(config.cache_recheck_interval.total_seconds(), 0.05)
        self._destroy_grace = (
            destroy_grace if destroy_grace is not None else max(2 * config.cache_recheck_interval, MIN_DESTROY_GRACE)
        )
        self._root: RootKey | None = None
        self._wrapper: KeyWrapper | None = None
        self._active: DataKey | None = None
        self._active_record: DataKeyRecord | None = None
        self._active_deadline = float("inf")  # monotonic time the active key is due for rotation
        self._keys: dict[int, DataKey] = {}
        self._destroyed: set[int] = set()
        self._seen_revoked: int | None = None
        self._pending_counts: dict[int, int] = {}
        self._load_lock = asyncio.Lock()
        self._rotate_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._initialized = False
        self.crypto = CryptoService(
            self, max_plaintext_bytes=config.max_plaintext_bytes, max_batch_items=config.max_batch_items
        )

    def __repr__(self) -> str:
        version = self._active.version if self._active else None
        return f"KMSManager(storage={self.storage.kind}, active_version={version})"

    @property
    def initialized(self) -> bool:
        return self._initialized

    # ---- lifecycle -------------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Derive the root key, verify stored keys, ensure an active key, start background work."""
        if self._initialized:
            return
        algorithm_for_new_key(self.config.algorithm)
        root = await derive_root_key_async(self._seed, self._salt, self.config.iterations, self.config.key_length)
        self._root, self._wrapper = root, KeyWrapper(root)
        try:
            records = await self.storage.all_keys()
            self._verify_all(records)
            self._seen_revoked = sum(r.status is KeyStatus.REVOKED for r in records)
            active = next((r for r in records if r.status is KeyStatus.ACTIVE), None)
            if active is None:
                await self._rotate(None, "no active data key", trigger="startup")
            else:
                self._install_active(active)
                due = self._rotation_due(active, 0)
                if due:
                    await self._rotate(active.version, due, trigger="startup")
        except BaseException:
            self._drop_material()
            raise
        await self.events.start(self._on_event)
        self._task = asyncio.create_task(self._run(), name="kms-manager")
        self._initialized = True
        log.info("kms initialized", extra={"active_version": self._active_version() or 0, "storage": self.storage.kind})

    def _verify_all(self, records: Sequence[DataKeyRecord]) -> None:
        assert self._wrapper is not None
        readable = [r for r in records if r.wrapped_key is not None]
        bad: list[int] = []
        for record in readable:
            try:
                self._wrapper.unwrap(record.id, record.version, record.algorithm, record.wrapped_key, record.key_hash)
            except KeyUnwrapError:
                bad.append(record.version)
        if not bad:
            return
        shown = ", ".join(str(v) for v in bad[:10]) + (", …" if len(bad) > 10 else "")
        detail = "" if len(bad) == len(readable) else " (or those rows were altered)"
        message = (
            f"root key does not match stored data keys (wrong kms.seed/kms.salt?){detail}: "
            f"{len(bad)} of {len(readable)} stored data keys fail to unwrap (versions {shown}); "
            "refusing to start rather than create a key over unreadable ones"
        )
        log.error("kms: %s", message)
        raise RootKeyMismatch(message)

    async def close(self) -> None:
        """Stop background work, flush counts, drop every key from memory."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await self.events.close()
        if self._initialized:
            try:
                async with asyncio.timeout(5):
                    await self._flush_counts()
            except Exception as exc:
                log.warning("kms: could not flush encryption counts at shutdown", extra={"error": type(exc).__name__})
        self._initialized = False
        self._drop_material()
        await self.storage.close()

    def _drop_material(self) -> None:
        self._active = None
        self._active_record = None
        self._keys.clear()
        self.crypto.drop_index_keys()
        self._wrapper = None
        if self._root is not None:
            self._root.wipe()
            self._root = None

    # ---- KeyProvider (used by CryptoService) -------------------------------------------------------

    def cached_active(self) -> DataKey | None:
        if self._active is not None and time.monotonic() >= self._active_deadline:
            self._wake.set()  # due: keep encrypting, let the background task rotate
        return self._active

    async def load_active(self) -> DataKey:
        if not self._initialized or self._wrapper is None:
            raise _not_initialized()
        async with self._load_lock:
            if self._active is None:
                record = await self.storage.get_active()
                if record is None:
                    raise FailedPrecondition("NO_ACTIVE_KEY", "no active data key")
                self._install_active(record)
            assert self._active is not None
            return self._active

    def cached(self, version: int) -> DataKey | None:
        return self._keys.get(version)

    async def load(self, version: int) -> DataKey:
        if not self._initialized or self._wrapper is None:
            raise _not_initialized()
        if version in self._destroyed:
            raise _key_not_found(version)
        async with self._load_lock:
            if version in self._keys:
                return self._keys[version]
            record = await self.storage.get_by_version(version)
            if record is None or record.wrapped_key is None:
                if record is not None:
                    self._destroyed.add(version)
                raise _key_not_found(version)
            key = self._unwrap(record)
            if key is None:
                raise _key_not_found(version)
            if self._active is not None and version > self._active.version:
                self._wake.set()  # a newer key exists: we missed a rotation, re-check now
            self._keys[version] = key
            return key

    def count_encryptions(self, version: int, n: int) -> None:
        if n <= 0:
            return
        pending = self._pending_counts[version] = self._pending_counts.get(version, 0) + n
        record = self._active_record
        if record is not None and version == record.version and record.encryption_count + pending >= self._rotate_after:
            self._wake.set()

    def blind_index_key(self, field: str) -> bytes:
        if self._root is None:
            raise _not_initialized()
        return self._root.blind_index_key(field)

    def derive_secret(self, purpose: bytes) -> bytes:
        """A long-term secret for another component (e.g. captcha code hashing), the same on every replica."""
        if self._root is None:
            raise _not_initialized()
        return self._root.derive(b"authkms/secret:" + purpose)

    def drop_cached_keys(self) -> None:
        """Forget unwrapped retired keys; the active key is kept (it is what encryption needs)."""
        active = self._active
        self._keys = {active.version: active} if active is not None else {}

    @property
    def _rotate_after(self) -> int:
        return self.config.rotate_after_encryptions

    # ---- cache -------------------------------------------------------------------------------------

    def _unwrap(self, record: DataKeyRecord) -> DataKey | None:
        assert self._wrapper is not None
        try:
            material = self._wrapper.unwrap(
                record.id, record.version, record.algorithm, record.wrapped_key, record.key_hash
            )
            return DataKey(record.version, Algorithm(record.algorithm), material)
        except (KeyUnwrapError, ValueError):
            log.error("kms: stored data key does not unwrap", extra={"key_version": record.version})
            return None

    def _install_active(self, record: DataKeyRecord) -> None:
        """Make ``record`` the active key; a different version also drops every other cached key."""
        if self._active is not None and self._active.version == record.version:
            key = self._active
        else:
            unwrapped = self._unwrap(record)
            if unwrapped is None:
                raise FailedPrecondition("NO_ACTIVE_KEY", "the active data key cannot be unwrapped")
            key = unwrapped
            self._keys = {}
        self._keys[key.version] = key
        self._active = key
        self._active_record = record
        self._active_deadline = self._deadline(record)

    def _deadline(self, record: DataKeyRecord) -> float:
        due = [record.created_at + self.config.rotate_interval] if self.config.rotate_interval > timedelta(0) else []
        if record.expires_at is not None:
            due.append(record.expires_at)
        if not due:
            return float("inf")
        return time.monotonic() + (min(due) - _now()).total_seconds()

    def _rotation_due(self, record: DataKeyRecord, unflushed: int) -> str | None:
        now = _now()
        if record.expires_at is not None and record.expires_at <= now:
            return "active key expired"
        interval = self.config.rotate_interval
        if interval > timedelta(0) and record.created_at + interval <= now:
            return "rotate interval elapsed"
        if record.encryption_count + unflushed >= self._rotate_after:
            return "encryption count threshold reached"
        return None

    def clear_cache(self) -> None:
        """Drop cached keys; the active key reloads from storage on the next encryption."""
        self._keys.clear()
        self._active = None
        self._active_record = None
        self._active_deadline = float("inf")
        self.crypto.drop_index_keys()

    # ---- background work ---------------------------------------------------------------------------

    async def _run(self) -> None:
        # Early wake-ups (a due key noticed by encrypt) are spaced out, and after a failure (storage
        # down) the next attempt waits a full interval, so a busy replica never hammers the database.
        min_gap = min(_MIN_TICK_GAP_SECONDS, self._recheck)
        while True:
            try:
                async with asyncio.timeout(self._recheck):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("kms background check failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(self._recheck)
            else:
                await asyncio.sleep(min_gap)

    async def _tick(self) -> None:
        await self._flush_counts()
        record = await self.storage.get_active()
        if record is None:
            await self._rotate_guarded(None, "no active data key", "automatic")
            return
        if self._active is None or record.version != self._active.version:
            log.info("kms: active key changed elsewhere; cache reloaded", extra={"active_version": record.version})
        unflushed = self._pending_counts.get(record.version, 0)
        self._install_active(record)
        await self._forget_destroyed_keys()
        due = self._rotation_due(record, unflushed)
        if due:
            await self._rotate_guarded(record.version, due, "automatic")

    async def _forget_destroyed_keys(self) -> None:
        """Fallback for a lost "destroyed" event: while retired keys are cached, one statistics query per
        interval notices a destruction elsewhere and drops them (they reload on demand if still present)."""
        if len(self._keys) <= 1:
            return
        revoked = (await self.storage.statistics()).counts.get(KeyStatus.REVOKED.value, 0)
        if self._seen_revoked is not None and revoked != self._seen_revoked:
            self.drop_cached_keys()
        self._seen_revoked = revoked

    async def _flush_counts(self) -> None:
        counts, self._pending_counts = self._pending_counts, {}
        if not counts:
            return
        try:
            await self.storage.add_encryption_counts(counts)
        except BaseException:
            for version, n in counts.items():
                self._pending_counts[version] = self._pending_counts.get(version, 0) + n
            raise
        record = self._active_record
        if record is not None and record.version in counts:
            self._active_record = replace(record, encryption_count=record.encryption_count + counts[record.version])
        log.debug("kms: encryption counts flushed", extra={"keys": len(counts), "encryptions": sum(counts.values())})

    async def _on_event(self, event: KeyEvent | None) -> None:
        if event is not None and event.origin == self.instance_id:
            return
        if not self._initialized:
            return
        if event is not None and event.kind == "destroyed":
            self._destroyed.add(event.version)
            self._keys.pop(event.version, None)
        record = await self.storage.get_active()
        if record is not None:
            self._install_active(record)
        self.drop_cached_keys()
        log.info(
            "kms: key event received; cache cleared",
            extra={"event": event.kind if event else "resync", "active_version": record.version if record else 0},
        )

    # ---- rotation ----------------------------------------------------------------------------------

    def _make_key_factory(self, reason: str) -> Callable[[int], NewDataKey]:
        algorithm = algorithm_for_new_key(self.config.algorithm)
        wrapper = self._wrapper
        if wrapper is None:
            raise _not_initialized()
        interval = self.config.rotate_interval
        lifetime = interval if interval > timedelta(0) else None

        def make_key(version: int) -> NewDataKey:
            key_id = str(uuid.uuid4())
            material = new_material()
            return NewDataKey(
                id=key_id,
                version=version,
                algorithm=algorithm.value,
                wrapped_key=wrapper.wrap(key_id, version, algorithm, material),
                key_hash=wrapper.key_hash(material),
                lifetime=lifetime,
                metadata={ROTATION_REASON: reason[:_MAX_REASON_CHARS]},
            )

        return make_key

    async def _rotate(self, expected: int | None, reason: str, trigger: str) -> KeyInfo:
        make_key = self._make_key_factory(reason)
        try:
            await self._flush_counts()
        except Exception as exc:
            log.warning("kms: count flush before rotation failed", extra={"error": type(exc).__name__})
        try:
            outcome = await self.storage.rotate(expected, make_key)
        except Exception:
            await record_safely(self._audit, audit.ROTATE, "failure", {"trigger": trigger, "from_version": expected})
            raise
        self._install_active(outcome.record)
        version = outcome.record.version
        if outcome.created:
            log.info(
                "kms: data key rotated",
                extra={
                    "trigger": trigger,
                    "active_version": version,
                    "previous_version": outcome.previous_version or 0,
                },
            )
            await self.events.publish(KeyEvent("rotated", version, self.instance_id))
        else:
            log.info("kms: rotation already done by another replica", extra={"active_version": version})
        await record_safely(
            self._audit,
            audit.ROTATE,
            "success" if outcome.created else "superseded",
            {
                "trigger": trigger,
                "reason": reason[:_MAX_REASON_CHARS],
                "version": version,
                "previous_version": outcome.previous_version or 0,
            },
        )
        return KeyInfo.of(outcome.record)

    async def _rotate_guarded(self, expected: int | None, reason: str, trigger: str) -> KeyInfo:
        async with self._rotate_lock:
            if self._active is not None and expected is not None and self._active.version != expected:
                assert self._active_record is not None
                return KeyInfo.of(self._active_record)
            return await self._rotate(expected, reason, trigger)

    async def rotate(self, reason: str = "", *, expected_version: int | None = None) -> KeyInfo:
        """Make a new active key; the previous one becomes decrypt-only. Returns the new key's metadata.

        "Rotate away from the key this replica knows" (or ``expected_version``): if another replica has
        already replaced it, that replica's key is returned and no second key is made.
        """
        if not self._initialized:
            raise _not_initialized()
        async with self._rotate_lock:
            expected = expected_version if expected_version is not None else self._active_version()
            return await self._rotate(expected, reason or "manual rotation", trigger="manual")

    def _active_version(self) -> int | None:
        return self._active.version if self._active is not None else None

    async def refresh(self) -> KeyInfo:
        """Re-read the stored active key now (what the periodic re-check does every interval)."""
        if not self._initialized:
            raise _not_initialized()
        record = await self.storage.get_active()
        if record is None:
            raise FailedPrecondition("NO_ACTIVE_KEY", "no active data key")
        self._install_active(record)
        return KeyInfo.of(record, self._pending_counts.get(record.version, 0))

    # ---- queries -----------------------------------------------------------------------------------

    async def active_key(self) -> KeyInfo:
        if not self._initialized:
            raise _not_initialized()
        await self.load_active()
        assert self._active_record is not None
        return KeyInfo.of(self._active_record, self._pending_counts.get(self._active_record.version, 0))

    async def key_by_version(self, version: int) -> KeyInfo:
        if not self._initialized:
            raise _not_initialized()
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise InvalidArgument("VALIDATION_ERROR", "version must be a positive integer")
        record = await self.storage.get_by_version(version)
        if record is None:
            raise _key_not_found(version)
        return KeyInfo.of(record, self._pending_counts.get(version, 0))

    async def list_keys(self, page_size: int = 0, page_token: str = "", status: str = "") -> KeyPage:
        """Key metadata, newest version first, ``page_size`` (default 50, at most 500) per page."""
        if not self._initialized:
            raise _not_initialized()
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        before: int | None = None
        if page_token:
            if not page_token.isdigit() or not 0 < int(page_token) <= 2**31:
                raise InvalidArgument("VALIDATION_ERROR", "invalid page_token")
            before = int(page_token)
        try:
            wanted = KeyStatus(status) if status else None
        except ValueError:
            raise InvalidArgument("VALIDATION_ERROR", "status must be active, inactive, expired or revoked") from None
        rows = await self.storage.list_keys(status=wanted, before_version=before, limit=size + 1)
        token = str(rows[size - 1].version) if len(rows) > size else ""
        return KeyPage([KeyInfo.of(r, self._pending_counts.get(r.version, 0)) for r in rows[:size]], token)

    async def status(self) -> KmsStatus:
        stats = await self.storage.statistics()
        record = self._active_record if self._initialized else None
        return KmsStatus(
            initialized=self._initialized and record is not None,
            algorithm=self.config.algorithm,
            rotate_interval_seconds=int(self.config.rotate_interval.total_seconds()),
            active_version=record.version if record else 0,
            active_created_at=record.created_at if record else None,
            active_expires_at=record.expires_at if record else None,
            active_encryption_count=self._count_with_pending(record) if record else 0,
            counts=dict(stats.counts),
            storage_type=self.storage.kind,
        )

    def _count_with_pending(self, record: DataKeyRecord) -> int:
        return record.encryption_count + self._pending_counts.get(record.version, 0)

    # ---- maintenance -------------------------------------------------------------------------------

    async def maintenance(
        self,
        batch_size: int = 0,
        dry_run: bool = False,
        progress: Callable[[MaintenanceProgress], None] | None = None,
    ) -> MaintenanceReport:
        """Mark expired keys, re-encrypt records under retired keys (at most ``batch_size`` this call,
        each batch committed), destroy keys nothing needs. Call again until ``done``."""
        if not self._initialized:
            raise _not_initialized()
        budget = batch_size if batch_size > 0 else self.config.maintenance_batch_size
        now = _now()
        rotated = False
        record = self._active_record
        due = record is not None and self._rotation_due(record, self._pending_counts.get(record.version, 0))
        if due and record is not None and not dry_run:
            await self._rotate_guarded(record.version, "due at maintenance", "maintenance")
            rotated = True
        if dry_run:
            keys = await self.storage.all_keys()
            expired = [
                r.version
                for r in keys
                if r.status is KeyStatus.INACTIVE and r.expires_at is not None and r.expires_at <= now
            ]
        else:
            expired = await self.storage.mark_expired(now)
        active = await self.load_active()
        reencrypted = failed = skipped = 0
        for target in self.targets if not dry_run else []:
            cursor: str | None = None
            while budget > 0:
                chunk = min(budget, self.config.maintenance_batch_size)
                batch = await target.reencrypt_batch(self.crypto, active.version, cursor, chunk)
                reencrypted += batch.reencrypted
                failed += batch.failed
                skipped += batch.skipped
                budget -= max(batch.scanned, 1)
                if progress is not None:
                    progress(MaintenanceProgress(target.name, reencrypted, failed, skipped))
                cursor = batch.cursor
                if cursor is None or batch.scanned == 0:
                    break
        remaining = 0
        for target in self.targets:
            remaining += await target.pending(active.version)
        destroyed = await self._destroy_unneeded(active.version, dry_run, now)
        report = MaintenanceReport(
            expired_marked=len(expired),
            records_reencrypted=reencrypted,
            records_failed=failed,
            keys_destroyed=destroyed,
            remaining=remaining,
            done=remaining == 0,
            rotated=rotated,
            dry_run=dry_run,
        )
        log.info(
            "kms maintenance",
            extra={
                "dry_run": dry_run,
                "expired_marked": report.expired_marked,
                "records_reencrypted": reencrypted,
                "records_failed": failed,
                "keys_destroyed": destroyed,
                "remaining": remaining,
            },
        )
        await record_safely(
            self._audit,
            audit.MAINTENANCE,
            "success",
            {
                "dry_run": dry_run,
                "expired_marked": report.expired_marked,
                "records_reencrypted": reencrypted,
                "records_failed": failed,
                "keys_destroyed": destroyed,
                "remaining": remaining,
            },
        )
        return report

    async def _destroy_unneeded(self, active_version: int, dry_run: bool, now: datetime) -> int:
        needed: set[int] = {active_version}
        for target in self.targets:
            needed |= await target.versions_in_use()
        candidates = [
            r
            for r in await self.storage.all_keys()
            if _destroyable(r, now, self._destroy_grace, dry_run) and r.version not in needed
        ]
        if dry_run:
            return len(candidates)
        destroyed = 0
        for record in candidates:
            if not await self.storage.destroy(record.version):
                continue
            destroyed += 1
            self._keys.pop(record.version, None)
            self._destroyed.add(record.version)
            log.info("kms: data key destroyed", extra={"key_version": record.version})
            await record_safely(self._audit, audit.DESTROY, "success", {"version": record.version})
            await self.events.publish(KeyEvent("destroyed", record.version, self.instance_id))
        return destroyed


def _destroyable(record: DataKeyRecord, now: datetime, grace: timedelta, dry_run: bool) -> bool:
    """Expired (a dry run also counts inactive keys it would have marked expired) and retired long
    enough that no replica can still be encrypting with it."""
    if record.wrapped_key is None:
        return False
    expired = record.status is KeyStatus.EXPIRED or (
        dry_run and record.status is KeyStatus.INACTIVE and record.expires_at is not None and record.expires_at <= now
    )
    return expired and (record.retired_at or record.updated_at) + grace <= now
