"""``KeyStorage`` in one JSON file, for single-node or offline use.

Every change is a read-modify-write under an exclusive ``fcntl.flock`` on a sidecar ``<file>.lock``
(the data file itself is replaced, so it cannot carry the lock), which makes several processes on one
host safe. Writes are atomic: the new content goes to a temporary file in the same directory, is
fsync'ed, renamed over the old file with ``os.replace`` and the directory is fsync'ed. A crash at any
point leaves either the previous or the new complete file; a stray temporary file is ignored.

A file that exists but does not parse stops the service (``KeyFileCorrupt``): starting over with an
empty key set would make every stored ciphertext unreadable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from internal.pkg.kms.storage import DataKeyRecord, KeyFactory, KeyStatistics, KeyStatus, RotateOutcome
from internal.pkg.kms.storage_memory import KeySet

FILE_FORMAT = "authkms-kms-keys/1"
T = TypeVar("T")


class KeyFileCorrupt(Exception):
    """The key file exists but cannot be read as a key set."""


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _encode(record: DataKeyRecord) -> dict[str, Any]:
    return {
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
        "destroyed_at": _time(record.destroyed_at),
        "metadata": dict(record.metadata),
    }


def _decode(item: Mapping[str, Any]) -> DataKeyRecord:
    wrapped = item["encrypted_key"]
    created = _parse_time(item["created_at"])
    updated = _parse_time(item["updated_at"])
    if created is None or updated is None:
        raise ValueError("created_at and updated_at are required")
    return DataKeyRecord(
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
        destroyed_at=_parse_time(item.get("destroyed_at")),
        metadata={str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
    )


def serialize(keys: KeySet) -> str:
    records = [_encode(keys.keys[v]) for v in sorted(keys.keys)]
    return json.dumps({"format": FILE_FORMAT, "keys": records}, indent=1, sort_keys=True) + "\n"


def parse(text: str) -> KeySet:
    """The key set in ``text``; raises ValueError unless it is a complete, consistent key file."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT or not isinstance(data.get("keys"), list):
        raise ValueError("not a key file")
    records = [_decode(item) for item in data["keys"]]
    if len({r.version for r in records}) != len(records):
        raise ValueError("duplicate key versions")
    if sum(r.status is KeyStatus.ACTIVE for r in records) > 1:
        raise ValueError("more than one active key")
    return KeySet(records)


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


class FileKeyStorage:
    kind = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
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

    def _locked_change(self, change: Callable[[KeySet], T]) -> T:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                keys = self._load()
                before = serialize(keys)
                result = change(keys)
                after = serialize(keys)
                if after != before:
                    write_atomically(self.path, after)
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def _change(self, change: Callable[[KeySet], T]) -> T:
        async with self._local:
            return await asyncio.to_thread(self._locked_change, change)

    async def _read(self) -> KeySet:
        # os.replace is atomic, so a plain read always sees one complete version of the file.
        return await asyncio.to_thread(self._load)

    async def rotate(self, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        return await self._change(lambda keys: keys.rotate(expected_active, make_key))

    async def get_active(self) -> DataKeyRecord | None:
        return (await self._read()).active()

    async def get_by_version(self, version: int) -> DataKeyRecord | None:
        return (await self._read()).keys.get(version)

    async def all_keys(self) -> list[DataKeyRecord]:
        keys = await self._read()
        return [keys.keys[v] for v in sorted(keys.keys)]

    async def list_keys(
        self, *, status: KeyStatus | None = None, before_version: int | None = None, limit: int = 50
    ) -> list[DataKeyRecord]:
        return (await self._read()).list_keys(status, before_version, limit)

    async def mark_status(self, version: int, status: KeyStatus, only_from: Collection[KeyStatus]) -> bool:
        return await self._change(lambda keys: keys.mark_status(version, status, only_from))

    async def mark_expired(self, now: datetime) -> list[int]:
        return await self._change(lambda keys: keys.mark_expired(now))

    async def update_expires(self, version: int, expires_at: datetime | None) -> bool:
        return await self._change(lambda keys: keys.update_expires(version, expires_at))

    async def add_encryption_counts(self, counts: Mapping[int, int]) -> None:
        if any(n > 0 for n in counts.values()):
            await self._change(lambda keys: keys.add_encryption_counts(counts))

    async def destroy(self, version: int) -> bool:
        return await self._change(lambda keys: keys.destroy(version))

    async def statistics(self) -> KeyStatistics:
        return (await self._read()).statistics()

    async def close(self) -> None:
        return None
