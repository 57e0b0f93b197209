"""``KeyStorage`` in process memory (tests, tools) and the key-set rules the file backend shares."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from internal.pkg.kms.storage import (
    RETIRED_AT,
    DataKeyRecord,
    KeyFactory,
    KeyStatistics,
    KeyStatus,
    RotateOutcome,
)

_RETIRED = (KeyStatus.INACTIVE, KeyStatus.EXPIRED)


def _now() -> datetime:
    return datetime.now(UTC)


class KeySet:
    """The rules of a key table over a plain dict (version → record); not thread-safe by itself."""

    def __init__(self, records: Collection[DataKeyRecord] = ()) -> None:
        self.keys: dict[int, DataKeyRecord] = {r.version: r for r in records}

    def active(self) -> DataKeyRecord | None:
        return next((r for r in self.keys.values() if r.status is KeyStatus.ACTIVE), None)

    def _update(self, version: int, **changes: object) -> DataKeyRecord:
        record = dataclasses.replace(self.keys[version], updated_at=_now(), **changes)  # type: ignore[arg-type]
        self.keys[version] = record
        return record

    def rotate(self, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        current = self.active()
        current_version = current.version if current else None
        if current is not None and current_version != expected_active:
            return RotateOutcome(current, created=False, previous_version=current_version)
        next_version = max(self.keys, default=0) + 1
        new = make_key(next_version)
        if current is not None:
            metadata = {**current.metadata, RETIRED_AT: _now().isoformat()}
            self._update(current.version, status=KeyStatus.INACTIVE, metadata=metadata)
        now = _now()
        record = DataKeyRecord(
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
        )
        self.keys[next_version] = record
        return RotateOutcome(record, created=True, previous_version=current_version)

    def list_keys(self, status: KeyStatus | None, before_version: int | None, limit: int) -> list[DataKeyRecord]:
        rows = sorted(self.keys.values(), key=lambda r: -r.version)
        rows = [r for r in rows if (status is None or r.status is status)]
        rows = [r for r in rows if before_version is None or r.version < before_version]
        return rows[:limit]

    def mark_status(self, version: int, status: KeyStatus, only_from: Collection[KeyStatus]) -> bool:
        record = self.keys.get(version)
        if record is None or record.status not in only_from or status is KeyStatus.REVOKED:
            return False
        if status is KeyStatus.ACTIVE and self.active() is not None:
            raise ValueError("another key is already active")
        self._update(version, status=status)
        return True

    def mark_expired(self, now: datetime) -> list[int]:
        versions = [
            r.version
            for r in self.keys.values()
            if r.status is KeyStatus.INACTIVE and r.expires_at is not None and r.expires_at <= now
        ]
        for version in versions:
            self._update(version, status=KeyStatus.EXPIRED)
        return sorted(versions)

    def update_expires(self, version: int, expires_at: datetime | None) -> bool:
        record = self.keys.get(version)
        if record is None or record.status is KeyStatus.REVOKED:
            return False
        self._update(version, expires_at=expires_at)
        return True

    def add_encryption_counts(self, counts: Mapping[int, int]) -> None:
        for version, n in counts.items():
            if n > 0 and version in self.keys:
                self._update(version, encryption_count=self.keys[version].encryption_count + n)

    def destroy(self, version: int) -> bool:
        record = self.keys.get(version)
        if record is None or record.status not in _RETIRED:
            return False
        self._update(version, status=KeyStatus.REVOKED, wrapped_key=None, destroyed_at=_now())
        return True

    def statistics(self) -> KeyStatistics:
        counts: dict[str, int] = {s.value: 0 for s in KeyStatus}
        by_algorithm: dict[str, int] = {}
        for record in self.keys.values():
            counts[record.status.value] += 1
            by_algorithm[record.algorithm] = by_algorithm.get(record.algorithm, 0) + 1
        return KeyStatistics(counts=counts, by_algorithm=by_algorithm, latest_version=max(self.keys, default=0))


class MemoryKeyStorage:
    kind = "memory"

    def __init__(self) -> None:
        self._set = KeySet()
        self._lock = asyncio.Lock()

    async def rotate(self, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        async with self._lock:
            return self._set.rotate(expected_active, make_key)

    async def get_active(self) -> DataKeyRecord | None:
        return self._set.active()

    async def get_by_version(self, version: int) -> DataKeyRecord | None:
        return self._set.keys.get(version)

    async def all_keys(self) -> list[DataKeyRecord]:
        return sorted(self._set.keys.values(), key=lambda r: r.version)

    async def list_keys(
        self, *, status: KeyStatus | None = None, before_version: int | None = None, limit: int = 50
    ) -> list[DataKeyRecord]:
        return self._set.list_keys(status, before_version, limit)

    async def mark_status(self, version: int, status: KeyStatus, only_from: Collection[KeyStatus]) -> bool:
        return self._set.mark_status(version, status, only_from)

    async def mark_expired(self, now: datetime) -> list[int]:
        return self._set.mark_expired(now)

    async def update_expires(self, version: int, expires_at: datetime | None) -> bool:
        return self._set.update_expires(version, expires_at)

    async def add_encryption_counts(self, counts: Mapping[int, int]) -> None:
        self._set.add_encryption_counts(counts)

    async def destroy(self, version: int) -> bool:
        return self._set.destroy(version)

    async def statistics(self) -> KeyStatistics:
        return self._set.statistics()

    async def close(self) -> None:
        return None
