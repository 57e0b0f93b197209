"""``KeyRepo`` in one JSON file, for single-node or offline use, and in process memory (tests, tools).

``KeySet`` holds the rules of the key tables over plain dicts; ``FileKeyRepo`` applies every change as a
read-modify-write under an exclusive ``fcntl.flock`` on a sidecar ``<file>.lock`` (mode 0600, acquired with a
timeout), which makes several processes on one host safe. Writes are atomic: the new content goes to a
temporary file in the same directory, is fsync'ed, renamed over the old file with ``os.replace`` and the
directory is fsync'ed. A crash at any point leaves either the previous or the new complete file.

A file that exists but does not parse stops the service (``KeyFileCorrupt``): starting over with an empty
key set would make every stored ciphertext unreadable. A file from before named keys (format 1) is read as
the versions of ``default``, as the database migration does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from internal.biz.errors import Unavailable
from internal.biz.kms import (
    DEFAULT_KEY,
    RETIRED,
    RETIRED_AT,
    DataKeyRecord,
    KeyFactory,
    KeySpec,
    KeyState,
    KeyStatus,
    NamedKey,
    PolicyChange,
    RotateOutcome,
    StoredSecret,
)

FILE_FORMAT = "authkms-kms-keys/2"
LEGACY_FILE_FORMAT = "authkms-kms-keys/1"
LOCK_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


class KeyFileCorrupt(Exception):
    """The key file exists but cannot be read as a key set."""


def _now() -> datetime:
    return datetime.now(UTC)


class KeySet:
    """The rules of the key tables over plain dicts; not thread-safe by itself."""

    def __init__(
        self,
        keys: Mapping[str, NamedKey] | None = None,
        versions: list[DataKeyRecord] | None = None,
        secret: StoredSecret | None = None,
    ) -> None:
        self.keys: dict[str, NamedKey] = dict(keys or {})
        self.versions: dict[tuple[str, int], DataKeyRecord] = {(r.key_name, r.version): r for r in versions or []}
        self.secret = secret

    def _bump(self, name: str) -> None:
        key = self.keys[name]
        self.keys[name] = dataclasses.replace(key, generation=key.generation + 1, updated_at=_now())

    def _of(self, name: str) -> list[DataKeyRecord]:
        return [r for (n, _), r in self.versions.items() if n == name]

    def _update(self, record: DataKeyRecord, **changes: Any) -> DataKeyRecord:
        new = dataclasses.replace(record, updated_at=_now(), **changes)
        self.versions[(record.key_name, record.version)] = new
        return new

    def create_key(self, spec: KeySpec) -> tuple[NamedKey, bool]:
        if spec.name in self.keys:
            return self.keys[spec.name], False
        now = _now()
        key = NamedKey(
            name=spec.name,
            algorithm=spec.algorithm,
            rotate_interval=spec.rotate_interval,
            rotate_after_encryptions=spec.rotate_after_encryptions,
            destruction_wait=spec.destruction_wait,
            description=spec.description,
            generation=1,
            created_at=now,
            updated_at=now,
        )
        self.keys[spec.name] = key
        return key, True

    def update_key(self, name: str, change: PolicyChange) -> NamedKey | None:
        key = self.keys.get(name)
        if key is None:
            return None
        changes = {k: v for k, v in dataclasses.asdict(change).items() if v is not None}
        self.keys[name] = dataclasses.replace(key, **changes)
        self._bump(name)
        return self.keys[name]

    def key_states(self) -> dict[str, KeyState]:
        states = {}
        for name, key in self.keys.items():
            active = self.active(name)
            states[name] = KeyState(key.generation, active.encryption_count if active else 0)
        return states

    def active(self, name: str) -> DataKeyRecord | None:
        return next((r for r in self._of(name) if r.status is KeyStatus.ACTIVE), None)

    def rotate(self, name: str, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        current = self.active(name)
        current_version = current.version if current else None
        if current is not None and current_version != expected_active:
            return RotateOutcome(current, created=False, previous_version=current_version)
        next_version = max((r.version for r in self._of(name)), default=0) + 1
        new = make_key(next_version)
        if current is not None:
            self._update(
                current, status=KeyStatus.INACTIVE, metadata={**current.metadata, RETIRED_AT: _now().isoformat()}
            )
        now = _now()
        record = DataKeyRecord(
            key_name=name,
            id=new.id,
            version=next_version,
            algorithm=new.algorithm,
            wrapped_key=new.wrapped_key,
            key_hash=new.key_hash,
            status=KeyStatus.ACTIVE,
            encryption_count=0,
            created_at=now,
            updated_at=now,
            expires_at=now + new.lifetime if new.lifetime else None,
            metadata=dict(new.metadata),
            root_fingerprint=new.root_fingerprint,
        )
        self.versions[(name, next_version)] = record
        self._bump(name)
        return RotateOutcome(record, created=True, previous_version=current_version)

    def list_versions(
        self, name: str, status: KeyStatus | None, before_version: int | None, limit: int
    ) -> list[DataKeyRecord]:
        rows = sorted(self._of(name), key=lambda r: -r.version)
        rows = [r for r in rows if status is None or r.status is status]
        rows = [r for r in rows if before_version is None or r.version < before_version]
        return rows[:limit]

    def mark_expired(self, name: str, now: datetime) -> list[int]:
        due = [
            r
            for r in self._of(name)
            if r.status is KeyStatus.INACTIVE and r.expires_at is not None and r.expires_at <= now
        ]
        for record in due:
            self._update(record, status=KeyStatus.EXPIRED)
        if due:
            self._bump(name)
        return sorted(r.version for r in due)

    def add_encryption_counts(self, counts: Mapping[tuple[str, int], int]) -> None:
        for slot, n in counts.items():
            record = self.versions.get(slot)
            if n > 0 and record is not None:
                self._update(record, encryption_count=record.encryption_count + n)

    def schedule_destruction(self, name: str, version: int, destroy_after: datetime) -> DataKeyRecord | None:
        record = self.versions.get((name, version))
        if record is None or record.status not in RETIRED:
            return None
        self._bump(name)
        return self._update(record, status=KeyStatus.PENDING_DESTRUCTION, destroy_after=destroy_after)

    def cancel_destruction(self, name: str, version: int) -> DataKeyRecord | None:
        record = self.versions.get((name, version))
        if record is None or record.status is not KeyStatus.PENDING_DESTRUCTION:
            return None
        self._bump(name)
        return self._update(record, status=KeyStatus.INACTIVE, destroy_after=None)

    def destroy(self, name: str, version: int, now: datetime) -> bool:
        record = self.versions.get((name, version))
        if record is None or record.status is not KeyStatus.PENDING_DESTRUCTION:
            return False
        if record.destroy_after is None or record.destroy_after > now:
            return False
        self._update(record, status=KeyStatus.REVOKED, wrapped_key=None, destroyed_at=_now())
        self._bump(name)
        return True

    def statistics(self, name: str) -> dict[str, int]:
        counts = {s.value: 0 for s in KeyStatus}
        for record in self._of(name):
            counts[record.status.value] += 1
        return counts

    def rewrap(self, record: DataKeyRecord, wrapped_key: bytes, key_hash: str, root_fingerprint: str) -> bool:
        current = self.versions.get((record.key_name, record.version))
        if current is None or current.wrapped_key != record.wrapped_key:
            return False
        self._update(current, wrapped_key=wrapped_key, key_hash=key_hash, root_fingerprint=root_fingerprint)
        return True

    def record_root_fingerprint(self, record: DataKeyRecord, root_fingerprint: str) -> None:
        current = self.versions.get((record.key_name, record.version))
        if current is not None and current.wrapped_key == record.wrapped_key and current.root_fingerprint is None:
            self._update(current, root_fingerprint=root_fingerprint)

    def put_service_secret(self, secret: StoredSecret, expected: StoredSecret | None) -> bool:
        if self.secret != expected:
            return False
        self.secret = secret
        return True


class MemoryKeyRepo:
    """``KeyRepo`` in process memory: one process, nothing persisted (tests and tools)."""

    kind = "memory"

    def __init__(self) -> None:
        self.set = KeySet()

    async def create_key(self, spec: KeySpec) -> tuple[NamedKey, bool]:
        return self.set.create_key(spec)

    async def get_key(self, name: str) -> NamedKey | None:
        return self.set.keys.get(name)

    async def list_keys(self, after_name: str, limit: int) -> list[NamedKey]:
        return [self.set.keys[n] for n in sorted(self.set.keys) if n > after_name][:limit]

    async def update_key(self, name: str, change: PolicyChange) -> NamedKey | None:
        return self.set.update_key(name, change)

    async def key_states(self) -> dict[str, KeyState]:
        return self.set.key_states()

    async def rotate(self, name: str, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        return self.set.rotate(name, expected_active, make_key)

    async def get_active(self, name: str) -> DataKeyRecord | None:
        return self.set.active(name)

    async def get_version(self, name: str, version: int) -> DataKeyRecord | None:
        return self.set.versions.get((name, version))

    async def all_versions(self) -> list[DataKeyRecord]:
        return [self.set.versions[k] for k in sorted(self.set.versions)]

    async def list_versions(
        self, name: str, *, status: KeyStatus | None, before_version: int | None, limit: int
    ) -> list[DataKeyRecord]:
        return self.set.list_versions(name, status, before_version, limit)

    async def mark_expired(self, name: str, now: datetime) -> list[int]:
        return self.set.mark_expired(name, now)

    async def add_encryption_counts(self, counts: Mapping[tuple[str, int], int]) -> None:
        self.set.add_encryption_counts(counts)

    async def schedule_destruction(self, name: str, version: int, destroy_after: datetime) -> DataKeyRecord | None:
        return self.set.schedule_destruction(name, version, destroy_after)

    async def cancel_destruction(self, name: str, version: int) -> DataKeyRecord | None:
        return self.set.cancel_destruction(name, version)

    async def destroy(self, name: str, version: int, now: datetime) -> bool:
        return self.set.destroy(name, version, now)

    async def statistics(self, name: str) -> dict[str, int]:
        return self.set.statistics(name)

    async def rewrap(self, record: DataKeyRecord, wrapped_key: bytes, key_hash: str, root_fingerprint: str) -> bool:
        return self.set.rewrap(record, wrapped_key, key_hash, root_fingerprint)

    async def record_root_fingerprint(self, record: DataKeyRecord, root_fingerprint: str) -> None:
        self.set.record_root_fingerprint(record, root_fingerprint)

    async def service_secret(self) -> StoredSecret | None:
        return self.set.secret

    async def put_service_secret(self, secret: StoredSecret, expected: StoredSecret | None) -> bool:
        return self.set.put_service_secret(secret, expected)

    async def close(self) -> None:
        return None


# ---- the file format --------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None


def _duration(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value is not None else None


def _encode_version(record: DataKeyRecord) -> dict[str, Any]:
    return {
        "key_name": record.key_name,
        "id": record.id,
        "version": record.version,
        "algorithm": record.algorithm,
        "encrypted_key": base64.b64encode(record.wrapped_key).decode() if record.wrapped_key is not None else None,
        "key_hash": record.key_hash,
        "status": record.status.value,
        "encryption_count": record.encryption_count,
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
        "expires_at": _time(record.expires_at),
        "destroy_after": _time(record.destroy_after),
        "destroyed_at": _time(record.destroyed_at),
        "metadata": dict(record.metadata),
        "root_fingerprint": record.root_fingerprint,
    }


def _decode_version(item: Mapping[str, Any]) -> DataKeyRecord:
    wrapped = item["encrypted_key"]
    created, updated = _parse_time(item["created_at"]), _parse_time(item["updated_at"])
    if created is None or updated is None:
        raise ValueError("created_at and updated_at are required")
    return DataKeyRecord(
        key_name=str(item.get("key_name", DEFAULT_KEY)),
        id=str(item["id"]),
        version=int(item["version"]),
        algorithm=str(item["algorithm"]),
        wrapped_key=base64.b64decode(wrapped, validate=True) if wrapped is not None else None,
        key_hash=str(item["key_hash"]),
        status=KeyStatus(item["status"]),
        encryption_count=int(item["encryption_count"]),
        created_at=created,
        updated_at=updated,
        expires_at=_parse_time(item.get("expires_at")),
        destroy_after=_parse_time(item.get("destroy_after")),
        destroyed_at=_parse_time(item.get("destroyed_at")),
        metadata={str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
        root_fingerprint=item.get("root_fingerprint"),
    )


def _encode_key(key: NamedKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "algorithm": key.algorithm,
        "rotate_interval_s": _seconds(key.rotate_interval),
        "rotate_after_encryptions": key.rotate_after_encryptions,
        "destruction_wait_s": _seconds(key.destruction_wait),
        "description": key.description,
        "generation": key.generation,
        "created_at": _time(key.created_at),
        "updated_at": _time(key.updated_at),
    }


def _decode_key(item: Mapping[str, Any]) -> NamedKey:
    created, updated = _parse_time(item["created_at"]), _parse_time(item["updated_at"])
    if created is None or updated is None:
        raise ValueError("created_at and updated_at are required")
    return NamedKey(
        name=str(item["name"]),
        algorithm=item.get("algorithm"),
        rotate_interval=_duration(item.get("rotate_interval_s")),
        rotate_after_encryptions=item.get("rotate_after_encryptions"),
        destruction_wait=_duration(item.get("destruction_wait_s")),
        description=str(item.get("description", "")),
        generation=int(item["generation"]),
        created_at=created,
        updated_at=updated,
    )


def serialize(keys: KeySet) -> str:
    document: dict[str, Any] = {
        "format": FILE_FORMAT,
        "keys": [_encode_key(keys.keys[n]) for n in sorted(keys.keys)],
        "versions": [_encode_version(keys.versions[k]) for k in sorted(keys.versions)],
    }
    if keys.secret is not None:
        document["service_secret"] = {
            "wrapped": base64.b64encode(keys.secret.wrapped).decode(),
            "root_fingerprint": keys.secret.root_fingerprint,
        }
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def parse(text: str) -> KeySet:
    """The key set in ``text``; raises ValueError unless it is a complete, consistent key file."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a key file")
    if data.get("format") == LEGACY_FILE_FORMAT and isinstance(data.get("keys"), list):
        now = _now()
        legacy = NamedKey(DEFAULT_KEY, None, None, None, None, "", 1, now, now)
        return _checked(KeySet({DEFAULT_KEY: legacy}, [_decode_version(item) for item in data["keys"]]))
    if data.get("format") != FILE_FORMAT or not isinstance(data.get("keys"), list):
        raise ValueError("not a key file")
    keys = {k.name: k for k in (_decode_key(item) for item in data["keys"])}
    stored = data.get("service_secret")
    secret = (
        StoredSecret(base64.b64decode(stored["wrapped"], validate=True), str(stored["root_fingerprint"]))
        if stored
        else None
    )
    return _checked(KeySet(keys, [_decode_version(item) for item in data["versions"]], secret))


def _checked(keys: KeySet) -> KeySet:
    for name in {n for n, _ in keys.versions}:
        if name not in keys.keys:
            raise ValueError("a version names an unknown key")
        if sum(r.status is KeyStatus.ACTIVE for r in keys._of(name)) > 1:
            raise ValueError("more than one active version of a key")
    return keys


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    """Temp file in the same directory → fsync → os.replace → fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class FileKeyRepo(MemoryKeyRepo):
    """The memory repository's rules, with every read and change going through the file."""

    kind = "file"

    def __init__(self, path: str | Path, lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_timeout = lock_timeout
        self._local = asyncio.Lock()

    def _load(self) -> KeySet:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return KeySet()
        try:
            return parse(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileCorrupt(f"KMS key file {self.path} is unreadable ({type(exc).__name__})") from None

    def _acquire(self, lock: int) -> None:
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        "SERVICE_UNAVAILABLE", f"the KMS key file lock was not free within {self._lock_timeout:g} s"
                    ) from None
                time.sleep(0.01)

    def _locked_change(self, change: Callable[[KeySet], T]) -> T:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._acquire(lock)
            keys = self._load()
            before = serialize(keys)
            result = change(keys)
            after = serialize(keys)
            if after != before:
                write_atomically(self.path, after)
            return result
        finally:
            os.close(lock)  # closing the descriptor releases the lock

    async def _change(self, change: Callable[[KeySet], T]) -> T:
        async with self._local:
            return await asyncio.to_thread(self._locked_change, change)

    async def _read(self) -> KeySet:
        # os.replace is atomic, so a plain read always sees one complete version of the file.
        self.set = await asyncio.to_thread(self._load)
        return self.set

    async def create_key(self, spec: KeySpec) -> tuple[NamedKey, bool]:
        return await self._change(lambda keys: keys.create_key(spec))

    async def get_key(self, name: str) -> NamedKey | None:
        return (await self._read()).keys.get(name)

    async def list_keys(self, after_name: str, limit: int) -> list[NamedKey]:
        await self._read()
        return await super().list_keys(after_name, limit)

    async def update_key(self, name: str, change: PolicyChange) -> NamedKey | None:
        return await self._change(lambda keys: keys.update_key(name, change))

    async def key_states(self) -> dict[str, KeyState]:
        return (await self._read()).key_states()

    async def rotate(self, name: str, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        return await self._change(lambda keys: keys.rotate(name, expected_active, make_key))

    async def get_active(self, name: str) -> DataKeyRecord | None:
        return (await self._read()).active(name)

    async def get_version(self, name: str, version: int) -> DataKeyRecord | None:
        return (await self._read()).versions.get((name, version))

    async def all_versions(self) -> list[DataKeyRecord]:
        await self._read()
        return await super().all_versions()

    async def list_versions(
        self, name: str, *, status: KeyStatus | None, before_version: int | None, limit: int
    ) -> list[DataKeyRecord]:
        return (await self._read()).list_versions(name, status, before_version, limit)

    async def mark_expired(self, name: str, now: datetime) -> list[int]:
        return await self._change(lambda keys: keys.mark_expired(name, now))

    async def add_encryption_counts(self, counts: Mapping[tuple[str, int], int]) -> None:
        if any(n > 0 for n in counts.values()):
            await self._change(lambda keys: keys.add_encryption_counts(counts))

    async def schedule_destruction(self, name: str, version: int, destroy_after: datetime) -> DataKeyRecord | None:
        return await self._change(lambda keys: keys.schedule_destruction(name, version, destroy_after))

    async def cancel_destruction(self, name: str, version: int) -> DataKeyRecord | None:
        return await self._change(lambda keys: keys.cancel_destruction(name, version))

    async def destroy(self, name: str, version: int, now: datetime) -> bool:
        return await self._change(lambda keys: keys.destroy(name, version, now))

    async def statistics(self, name: str) -> dict[str, int]:
        return (await self._read()).statistics(name)

    async def rewrap(self, record: DataKeyRecord, wrapped_key: bytes, key_hash: str, root_fingerprint: str) -> bool:
        return await self._change(lambda keys: keys.rewrap(record, wrapped_key, key_hash, root_fingerprint))

    async def record_root_fingerprint(self, record: DataKeyRecord, root_fingerprint: str) -> None:
        await self._change(lambda keys: keys.record_root_fingerprint(record, root_fingerprint))

    async def service_secret(self) -> StoredSecret | None:
        return (await self._read()).secret

    async def put_service_secret(self, secret: StoredSecret, expected: StoredSecret | None) -> bool:
        return await self._change(lambda keys: keys.put_service_secret(secret, expected))
