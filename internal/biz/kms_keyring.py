"""The key ring: the root key, the in-memory cache of every named key's versions, rotation and its invalidation.

Lifecycle
  * ``open()`` derives the root key (in a thread), proves it unwraps every stored version of every key (or
    refuses to start: it never creates a key over unreadable ones), makes sure ``default`` and the reserved
    users' key exist with an active version, subscribes to key events and starts the background task.
  * The background task runs every ``recheck`` (and sooner when an encryption notices a key is due): it
    flushes in-memory encryption counts, reads every key's generation (one query per interval, never per
    call), drops what it cached of a key another replica changed, and rotates cached keys that are due by
    interval, expiry or encryption count. Only one replica's rotation wins (repository semantics).
  * Encryption never fails because a key is due: it keeps using the current version and asks the background
    task to rotate.

Invalidation bound: a change made on one replica (creation, rotation, policy update, scheduled or cancelled
destruction, destruction) reaches every other replica within the pub/sub latency (milliseconds), at worst
within ``kms.cache_recheck_interval`` (default 5 s) when pub/sub is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from internal.biz.errors import DomainError, FailedPrecondition
from internal.biz.kms import (
    DEFAULT_KEY,
    MAX_REASON_CHARS,
    ROTATION_REASON,
    USERS_KEY,
    DataKeyRecord,
    KeyDefaults,
    KeyEvent,
    KeyEvents,
    KeyPolicy,
    KeyRepo,
    KeySpec,
    KeyStatus,
    NamedKey,
    NewDataKey,
    RotateOutcome,
    StoredSecret,
    key_not_found,
    not_initialized,
    pending_destruction,
)
from internal.biz.ports import AuditLog
from internal.pkg.kms.datakey import KeyUnwrapError, KeyWrapper, new_material
from internal.pkg.kms.envelope import Algorithm, DataKey, Sealer, algorithm_for_new_key
from internal.pkg.kms.rootkey import RootKey, derive_root_key_async

log = logging.getLogger(__name__)

_MIN_TICK_GAP_SECONDS = 0.05
MAX_CACHED_KEYS = 10_000
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RootKeyMismatch(Exception):
    """The configured root key cannot unwrap the stored data keys: refuse to start."""


@dataclass(frozen=True)
class RootKeySource:
    """How to derive the root key (configuration ``kms.seed``/``salt``/``iterations``/``key_length``), and during a
    root-key rotation the previous one (``kms.previous_seed``/``previous_salt``), which only unwraps."""

    seed: str = dataclasses.field(repr=False)
    salt: str = dataclasses.field(repr=False)
    iterations: int
    key_length: int
    previous_seed: str = dataclasses.field(default="", repr=False)
    previous_salt: str = dataclasses.field(default="", repr=False)


@dataclass(frozen=True)
class RekeyReport:
    rewrapped: int  # versions now wrapped under the current root key
    remaining: int  # versions still wrapped under another root key
    secret_moved: bool  # the service secret was (re-)wrapped under the current root key
    seconds: float


class _Root:
    """One root key and its wrapper."""

    __slots__ = ("fingerprint", "key", "wrapper")

    def __init__(self, key: RootKey) -> None:
        self.key = key
        self.wrapper = KeyWrapper(key)
        self.fingerprint = key.fingerprint()


class _CachedKey:
    """What a replica holds of one named key: its policy, active version and the versions it has opened."""

    __slots__ = ("active", "active_record", "deadline", "generation", "key", "policy", "unusable", "versions")

    def __init__(self, key: NamedKey, policy: KeyPolicy) -> None:
        self.key = key
        self.policy = policy
        self.generation = key.generation
        self.active: DataKey | None = None
        self.active_record: DataKeyRecord | None = None
        self.deadline = float("inf")  # monotonic time the active version is due for rotation
        self.versions: dict[int, DataKey] = {}
        self.unusable: dict[int, DomainError] = {}  # destroyed or pending versions: the error to answer


class KeyRing:
    """Owns all key material in memory (the root key, unwrapped versions, their sealers, blind-index keys) and
    is the one place that drops it: ``drop_cache`` for the caches, ``close`` for everything."""

    def __init__(
        self,
        repo: KeyRepo,
        root_source: RootKeySource,
        defaults: KeyDefaults,
        *,
        events: KeyEvents,
        audit: AuditLog,
        recheck: timedelta = timedelta(seconds=5),
        clock: Clock = utc_now,
    ) -> None:
        self.repo = repo
        self.events = events
        self.defaults = defaults
        self.instance_id = uuid.uuid4().hex[:12]
        self.clock = clock
        self._root_source = root_source
        self._audit = audit
        self._recheck = max(recheck.total_seconds(), 0.05)
        self._roots: list[_Root] = []  # the current root key first, then the previous one (rotation only)
        self._index_root: RootKey | None = None  # the service secret: source of blind-index keys
        self._keys: dict[str, _CachedKey] = {}
        self._missing: dict[str, float] = {}  # names known not to exist, until the monotonic time given
        self._sealers: dict[str, Sealer] = {}  # per key name: the sealer of its active version
        self._index_keys: dict[tuple[str, str], bytes] = {}  # (key name, field) → blind-index key
        self._pending_counts: dict[tuple[str, int], int] = {}
        self._load_lock = asyncio.Lock()
        self._rotate_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._initialized = False

    def __repr__(self) -> str:
        return f"KeyRing(storage={self.repo.kind}, keys_cached={len(self._keys)})"

    @property
    def initialized(self) -> bool:
        return self._initialized

    # ---- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Derive the root key, verify every stored version, ensure the built-in keys, start background work."""
        if self._initialized:
            return
        algorithm_for_new_key(self.defaults.algorithm)
        source = self._root_source
        sources = [(source.seed, source.salt)] + (
            [(source.previous_seed, source.previous_salt)] if source.previous_seed else []
        )
        keys = await asyncio.gather(
            *(derive_root_key_async(seed, salt, source.iterations, source.key_length) for seed, salt in sources)
        )
        self._roots = [_Root(key) for key in keys]
        try:
            await self._verify_all(await self.repo.all_versions())
            self._index_root = await self._open_service_secret()
            for name in (DEFAULT_KEY, USERS_KEY):
                await self.repo.create_key(KeySpec(name))
                await self._ensure_active(name, "startup")
        except BaseException:
            self._drop_material()
            raise
        self._initialized = True
        await self.events.start(self._on_event)
        self._task = asyncio.create_task(self._run(), name="kms-key-ring")
        log.info("kms initialized", extra={"storage": self.repo.kind})

    async def _ensure_active(self, name: str, trigger: str) -> None:
        entry = await self._load_key(name)
        if entry is None:
            raise key_not_found(name)
        if entry.active is None:
            await self._rotate(entry, None, "no active version", trigger)
            return
        assert entry.active_record is not None
        due = self._rotation_due(entry, entry.active_record)
        if due:
            await self._rotate(entry, entry.active.version, due, trigger)

    def _opening(self, record: DataKeyRecord) -> tuple[_Root, bytes] | None:
        """The root key that unwraps ``record`` (the one its fingerprint names first) and the material, or None."""
        for root in sorted(self._roots, key=lambda r: r.fingerprint != record.root_fingerprint):
            try:
                return root, root.wrapper.unwrap(
                    record.id, record.version, record.algorithm, record.wrapped_key, record.key_hash
                )
            except KeyUnwrapError:
                continue
        return None

    async def _verify_all(self, records: Sequence[DataKeyRecord]) -> None:
        """Prove a configured root key opens every stored version (noting which one, where not yet recorded)."""
        readable = [r for r in records if r.wrapped_key is not None]
        bad: list[str] = []
        for record in readable:
            opened = self._opening(record)
            if opened is None:
                bad.append(f"{record.key_name} v{record.version}")
            elif record.root_fingerprint is None:
                await self.repo.record_root_fingerprint(record, opened[0].fingerprint)
        if not bad:
            return
        shown = ", ".join(bad[:10]) + (", …" if len(bad) > 10 else "")
        detail = "" if len(bad) == len(readable) else " (or those rows were altered)"
        hint = (
            ""
            if len(self._roots) > 1
            else "; while rotating the root key, also configure kms.previous_seed and kms.previous_salt until "
            "`kms rekey` reports nothing left under the previous root key"
        )
        message = (
            f"root key does not match stored data keys (wrong kms.seed/kms.salt?){detail}: "
            f"{len(bad)} of {len(readable)} stored data keys fail to unwrap ({shown}); "
            f"refusing to start rather than create a key over unreadable ones{hint}"
        )
        log.error("kms: %s", message)
        raise RootKeyMismatch(message)

    async def _open_service_secret(self) -> RootKey:
        """The service secret, source of every blind-index key and long-term derived secret.

        Until the root key is first rotated it is the root key itself (so nothing changes for a deployment that
        never rotates); the first rekey stores the original root key's bytes wrapped under the new root key, so
        blind indexes, and the hashes callers stored, survive every rotation."""
        stored = await self.repo.service_secret()
        if stored is None:
            return self._roots[-1].key  # the original root key: the previous one while rotating
        for root in sorted(self._roots, key=lambda r: r.fingerprint != stored.root_fingerprint):
            try:
                return RootKey(root.wrapper.unwrap_secret(stored.wrapped))
            except KeyUnwrapError:
                continue
        message = "the stored service secret does not unwrap under kms.seed/kms.salt (nor the previous ones)"
        log.error("kms: %s", message)
        raise RootKeyMismatch(message)

    async def close(self) -> None:
        """Stop background work, flush counts, drop every key from memory."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        await self.events.close()
        if self._initialized:
            try:
                async with asyncio.timeout(5):
                    await self._flush_counts()
            except Exception as exc:
                log.warning("kms: could not flush encryption counts at shutdown", extra={"error": type(exc).__name__})
        self._initialized = False
        self._drop_material()
        await self.repo.close()

    def _drop_material(self) -> None:
        self.drop_cache()
        for root in self._roots:
            root.key.wipe()
        if self._index_root is not None:
            self._index_root.wipe()
        self._roots, self._index_root = [], None

    def drop_cache(self) -> None:
        """Forget every unwrapped version, sealer and blind-index key; each is rebuilt on its next use."""
        self._keys.clear()
        self._missing.clear()
        self._sealers.clear()
        self._index_keys.clear()

    # ---- lookups (the cipher's hot path uses the cached_* ones) -----------------------------------

    def cached_active(self, name: str) -> DataKey | None:
        entry = self._keys.get(name)
        if entry is None:
            return None
        if time.monotonic() >= entry.deadline:
            self._wake.set()  # due: keep encrypting, let the background task rotate
        return entry.active

    async def load_active(self, name: str) -> DataKey:
        entry = await self._entry(name)
        if entry.active is None:
            raise FailedPrecondition("NO_ACTIVE_KEY", "the key has no active version", {"key_name": name})
        return entry.active

    def cached(self, name: str, version: int) -> DataKey | None:
        entry = self._keys.get(name)
        return entry.versions.get(version) if entry is not None else None

    async def load(self, name: str, version: int) -> DataKey:
        """Version ``version`` of ``name``: KEY_NOT_FOUND if unknown or destroyed, KEY_PENDING_DESTRUCTION."""
        entry = await self._entry(name)
        if version in entry.versions:
            return entry.versions[version]
        if version in entry.unusable:
            raise entry.unusable[version]
        async with self._load_lock:
            record = await self.repo.get_version(name, version)
            error: DomainError | None = None
            if record is None or record.wrapped_key is None:
                error = key_not_found(name, version)
            elif record.status is KeyStatus.PENDING_DESTRUCTION:
                error = pending_destruction(record)
            if error is not None:
                # Remembered until the key changes, so a caller retrying costs no query; bounded, since
                # callers choose the versions they send.
                if len(entry.unusable) >= 1000:
                    entry.unusable.clear()
                entry.unusable[version] = error
                raise error
            assert record is not None
            key = self._unwrap(record)
            if entry.active is not None and version > entry.active.version:
                self._wake.set()  # a newer version exists: we missed a rotation, re-check now
            entry.versions[version] = key
            return key

    async def describe(self, name: str) -> tuple[NamedKey, KeyPolicy, DataKeyRecord | None]:
        """A key as cached: its record, effective policy and active version."""
        entry = await self._entry(name)
        return entry.key, entry.policy, entry.active_record

    def count_encryptions(self, name: str, version: int, n: int) -> None:
        if n <= 0:
            return
        slot = (name, version)
        pending = self._pending_counts[slot] = self._pending_counts.get(slot, 0) + n
        entry = self._keys.get(name)
        record = entry.active_record if entry is not None else None
        if entry is None or record is None or version != record.version:
            return
        if record.encryption_count + pending >= entry.policy.rotate_after_encryptions:
            self._wake.set()

    def unflushed(self, name: str, version: int) -> int:
        return self._pending_counts.get((name, version), 0)

    def sealer(self, key: DataKey) -> Sealer:
        """The sealer of ``key``, kept while it stays its named key's active version (its binding cache is per
        version)."""
        sealer = self._sealers.get(key.key_name)
        if sealer is None or sealer.key is not key:
            if len(self._sealers) >= MAX_CACHED_KEYS:
                self._sealers.clear()
            sealer = self._sealers[key.key_name] = Sealer(key)
        return sealer

    def blind_index_key(self, name: str, field: str) -> bytes:
        """The blind-index key of ``field`` under key ``name`` (derived once, then cached)."""
        slot = (name, field)
        index_key = self._index_keys.get(slot)
        if index_key is None:
            if self._index_root is None:
                raise not_initialized()
            if len(self._index_keys) >= MAX_CACHED_KEYS:
                self._index_keys.clear()  # callers choose field names: keep this bounded
            index_key = self._index_keys[slot] = self._index_root.blind_index_key(name, field)
        return index_key

    def derive_secret(self, purpose: bytes) -> bytes:
        """A long-term secret for another component (e.g. captcha code hashing), the same on every replica."""
        if self._index_root is None:
            raise not_initialized()
        return self._index_root.derive(b"authkms/secret:" + purpose)

    async def _entry(self, name: str) -> _CachedKey:
        entry = self._keys.get(name)
        if entry is not None:
            return entry
        if not self._initialized:
            raise not_initialized()
        if self._missing.get(name, 0.0) > time.monotonic():
            raise key_not_found(name)
        async with self._load_lock:
            entry = self._keys.get(name) or await self._load_key(name)
        if entry is None:
            if len(self._missing) >= MAX_CACHED_KEYS:
                self._missing.clear()  # callers choose the names they ask for: keep this bounded
            self._missing[name] = time.monotonic() + self._recheck
            raise key_not_found(name)
        return entry

    async def _load_key(self, name: str) -> _CachedKey | None:
        """Read a key and its active version from storage into the cache (replacing what was cached)."""
        key = await self.repo.get_key(name)
        if key is None:
            self._keys.pop(name, None)
            return None
        entry = _CachedKey(key, KeyPolicy.of(key, self.defaults))
        record = await self.repo.get_active(name)
        if record is not None:
            self._install_active(entry, record)
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[name] = entry
        self._missing.pop(name, None)
        return entry

    # ---- cache -----------------------------------------------------------------------------------

    def _unwrap(self, record: DataKeyRecord) -> DataKey:
        if not self._roots:
            raise not_initialized()
        opened = self._opening(record)
        try:
            if opened is None:
                raise ValueError("no configured root key unwraps it")
            return DataKey(record.key_name, record.version, Algorithm(record.algorithm), opened[1])
        except ValueError:
            log.error(
                "kms: stored data key does not unwrap",
                extra={"key_name": record.key_name, "key_version": record.version},
            )
            raise key_not_found(record.key_name, record.version) from None

    def _install_active(self, entry: _CachedKey, record: DataKeyRecord) -> None:
        key = entry.versions.get(record.version) or self._unwrap(record)
        entry.versions[key.version] = key
        entry.active = key
        entry.active_record = record
        entry.deadline = self._deadline(entry.policy, record)

    def _deadline(self, policy: KeyPolicy, record: DataKeyRecord) -> float:
        due = [record.created_at + policy.rotate_interval] if policy.rotate_interval > timedelta(0) else []
        if record.expires_at is not None:
            due.append(record.expires_at)
        if not due:
            return float("inf")
        return time.monotonic() + (min(due) - self.clock()).total_seconds()

    def _rotation_due(self, entry: _CachedKey, record: DataKeyRecord) -> str | None:
        now = self.clock()
        if record.expires_at is not None and record.expires_at <= now:
            return "active key expired"
        interval = entry.policy.rotate_interval
        if interval > timedelta(0) and record.created_at + interval <= now:
            return "rotate interval elapsed"
        count = record.encryption_count + self.unflushed(record.key_name, record.version)
        if count >= entry.policy.rotate_after_encryptions:
            return "encryption count threshold reached"
        return None

    def rotation_due(self, name: str) -> str | None:
        """Why the cached key's active version is due for rotation, or None."""
        entry = self._keys.get(name)
        if entry is None or entry.active_record is None:
            return None
        return self._rotation_due(entry, entry.active_record)

    async def forget(self, name: str) -> None:
        """Drop what this replica cached of ``name`` (after a change) and reload its active version."""
        async with self._load_lock:
            if name in self._keys or name in self._missing:
                self._missing.pop(name, None)
                self._keys.pop(name, None)
                await self._load_key(name)

    async def changed(self, name: str, kind: str, version: int) -> None:
        """This replica changed ``name``: refresh its own cache now and tell the others."""
        await self.forget(name)
        await self.events.publish(KeyEvent(kind, name, version, self.instance_id))

    # ---- background work -------------------------------------------------------------------------

    async def _run(self) -> None:
        # Early wake-ups (a due key noticed by encrypt) are spaced out, and after a failure (storage down)
        # the next attempt waits a full interval, so a busy replica never hammers the database.
        min_gap = min(_MIN_TICK_GAP_SECONDS, self._recheck)
        while True:
            try:
                async with asyncio.timeout(self._recheck):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("kms background check failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(self._recheck)
            else:
                await asyncio.sleep(min_gap)

    async def tick(self) -> None:
        """One background round: flush counts, notice changes made elsewhere, rotate what is due."""
        await self._flush_counts()
        states = await self.repo.key_states()
        for name, entry in list(self._keys.items()):
            state = states.get(name)
            if state is None or state.generation != entry.generation:
                log.info("kms: key changed elsewhere; cache reloaded", extra={"key_name": name})
                await self.forget(name)
            elif entry.active_record is not None:
                # Other replicas' encryptions count towards the rotation threshold too.
                entry.active_record = dataclasses.replace(
                    entry.active_record, encryption_count=state.active_encryptions
                )
        self._missing = {n: t for n, t in self._missing.items() if n not in states}
        for name in list(self._keys):
            cached = self._keys.get(name)
            if cached is None:
                continue
            record = cached.active_record
            if record is None:
                await self._rotate_guarded(name, None, "no active version", "automatic")
                continue
            due = self._rotation_due(cached, record)
            if due:
                await self._rotate_guarded(name, record.version, due, "automatic")

    async def _flush_counts(self) -> None:
        counts, self._pending_counts = self._pending_counts, {}
        if not counts:
            return
        try:
            await self.repo.add_encryption_counts(counts)
        except BaseException:
            for slot, n in counts.items():
                self._pending_counts[slot] = self._pending_counts.get(slot, 0) + n
            raise
        for (name, version), n in counts.items():
            entry = self._keys.get(name)
            record = entry.active_record if entry is not None else None
            if entry is not None and record is not None and record.version == version:
                entry.active_record = dataclasses.replace(record, encryption_count=record.encryption_count + n)

    async def _on_event(self, event: KeyEvent | None) -> None:
        if not self._initialized or (event is not None and event.origin == self.instance_id):
            return
        if event is None:
            self.drop_cache()
            log.info("kms: key events resynchronized; cache cleared")
            return
        await self.forget(event.key_name)
        log.info("kms: key event received", extra={"event": event.kind, "key_name": event.key_name})

    # ---- rotation --------------------------------------------------------------------------------

    def _key_factory(self, policy: KeyPolicy, reason: str) -> Callable[[int], NewDataKey]:
        algorithm = algorithm_for_new_key(policy.algorithm)
        if not self._roots:
            raise not_initialized()
        wrapper, fingerprint = self._roots[0].wrapper, self._roots[0].fingerprint  # new wraps: the current root
        lifetime = policy.rotate_interval if policy.rotate_interval > timedelta(0) else None

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
                metadata={ROTATION_REASON: reason[:MAX_REASON_CHARS]},
                root_fingerprint=fingerprint,
            )

        return make_key

    async def _rotate(self, entry: _CachedKey, expected: int | None, reason: str, trigger: str) -> DataKeyRecord:
        name = entry.key.name
        make_key = self._key_factory(entry.policy, reason)
        try:
            await self._flush_counts()
        except Exception as exc:
            log.warning("kms: count flush before rotation failed", extra={"error": type(exc).__name__})
        details: dict[str, str | int | bool] = {"key_name": name, "trigger": trigger, "from_version": expected or 0}
        try:
            outcome: RotateOutcome = await self.repo.rotate(name, expected, make_key)
        except Exception:
            await self._audit_safely("kms.key_rotate", "failure", details)
            raise
        version = outcome.record.version
        await self.forget(name)
        if outcome.created:
            log.info("kms: data key rotated", extra={**details, "active_version": version})
            await self.events.publish(KeyEvent("rotated", name, version, self.instance_id))
        else:
            log.info("kms: rotation already done by another replica", extra={"key_name": name})
        outcome_name = "success" if outcome.created else "superseded"
        await self._audit_safely(
            "kms.key_rotate", outcome_name, {**details, "reason": reason[:MAX_REASON_CHARS], "version": version}
        )
        return outcome.record

    async def _rotate_guarded(self, name: str, expected: int | None, reason: str, trigger: str) -> DataKeyRecord:
        async with self._rotate_lock:
            entry = await self._entry(name)
            current = entry.active_record
            if current is not None and expected is not None and current.version != expected:
                return current
            return await self._rotate(entry, expected, reason, trigger)

    async def rotate(self, name: str, reason: str, trigger: str = "manual") -> DataKeyRecord:
        """Make a new active version of ``name``; the previous one becomes decrypt-only.

        "Rotate away from the version this replica knows": if another replica has already replaced it, that
        replica's version is returned and no second one is made."""
        if not self._initialized:
            raise not_initialized()
        async with self._rotate_lock:
            entry = await self._entry(name)
            expected = entry.active.version if entry.active is not None else None
            return await self._rotate(entry, expected, reason or "manual rotation", trigger)

    async def _audit_safely(self, event: str, outcome: str, details: dict[str, str | int | bool]) -> None:
        """Audit failures are logged, not raised: the key operation they describe has already happened."""
        try:
            await self._audit.record(event, outcome, actor="kms", details=details)
        except Exception as exc:
            log.warning("kms audit record failed", extra={"audit_event": event, "error": type(exc).__name__})

    async def audit(self, event: str, outcome: str, details: dict[str, str | int | bool]) -> None:
        await self._audit_safely(event, outcome, details)

    # ---- root-key rotation -----------------------------------------------------------------------

    @property
    def root_fingerprint(self) -> str:
        if not self._roots:
            raise not_initialized()
        return self._roots[0].fingerprint

    def under_previous_root(self, records: Sequence[DataKeyRecord]) -> int:
        """How many of ``records`` (with material) are not wrapped under the current root key."""
        current = self.root_fingerprint
        return sum(r.wrapped_key is not None and r.root_fingerprint != current for r in records)

    async def rekey(self, limit: int = 0, progress: Callable[[int, int], None] | None = None) -> RekeyReport:
        """Re-wrap up to ``limit`` versions (0: all) still under the previous root key, and the service secret,
        under the current root key. Each version is replaced only if it still holds the wrapping that was read
        (compare and set), so concurrent or interrupted runs never leave a version unreadable; call again until
        nothing remains. The material, and so every ciphertext, stays the same."""
        if not self._initialized:
            raise not_initialized()
        started = time.monotonic()
        current = self._roots[0]
        secret_moved = await self._move_service_secret(current)
        records = [r for r in await self.repo.all_versions() if r.wrapped_key is not None]
        todo = [r for r in records if r.root_fingerprint != current.fingerprint]
        rewrapped = 0
        for record in todo[:limit] if limit > 0 else todo:
            opened = self._opening(record)
            if opened is None:
                raise RootKeyMismatch(
                    f"{record.key_name} v{record.version} does not unwrap under a configured root key"
                )
            root, material = opened
            if root is not current:
                wrapped = current.wrapper.wrap(record.id, record.version, Algorithm(record.algorithm), material)
                hashed = current.wrapper.key_hash(material)
                rewrapped += await self.repo.rewrap(record, wrapped, hashed, current.fingerprint)
            else:  # already under the current root, its fingerprint not yet recorded
                await self.repo.record_root_fingerprint(record, current.fingerprint)
            if progress is not None:
                progress(rewrapped, len(todo))
        remaining = self.under_previous_root(await self.repo.all_versions())
        report = RekeyReport(rewrapped, remaining, secret_moved, time.monotonic() - started)
        await self._audit_safely(
            "kms.rekey",
            "success",
            {"rewrapped": rewrapped, "remaining": remaining, "secret_moved": secret_moved, "root": current.fingerprint},
        )
        log.info("kms rekey", extra={"rewrapped": rewrapped, "remaining": remaining})
        return report

    async def _move_service_secret(self, current: _Root) -> bool:
        """Store the service secret wrapped under the current root key, if it is not already."""
        stored = await self.repo.service_secret()
        if stored is None and len(self._roots) == 1:
            return False  # no rotation going on: the secret is still the root key itself
        if stored is not None and stored.root_fingerprint == current.fingerprint:
            return False
        assert self._index_root is not None
        secret = StoredSecret(current.wrapper.wrap_secret(self._index_root.material_to_wrap()), current.fingerprint)
        return await self.repo.put_service_secret(secret, stored)
