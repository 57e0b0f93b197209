"""Key storage interface: wrapped data keys and their lifecycle, never plaintext key material.

Backends: ``storage_pg.PgKeyStorage`` (the ``kms_data_keys`` table, default), ``storage_file.FileKeyStorage``
(one JSON file for single-node/offline use) and ``storage_memory.MemoryKeyStorage`` (tests).

Rotation is one atomic step with compare-and-set semantics: "make a new active key if the active key is
still version N". Two replicas that both decide to rotate away from N produce exactly one new key; the
loser gets the winner's key back (``RotateOutcome.created`` is False).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol


class KeyStatus(StrEnum):
    ACTIVE = "active"  # the one key new values are encrypted with
    INACTIVE = "inactive"  # rotated out: decrypt-only
    EXPIRED = "expired"  # past expires_at: decrypt-only, may be destroyed once nothing needs it
    REVOKED = "revoked"  # destroyed: material erased, row kept for the record


RETIRED_AT = "retired_at"  # metadata key: ISO time the key stopped being active
ROTATION_REASON = "rotation_reason"


@dataclass(frozen=True)
class DataKeyRecord:
    """One stored data key. ``wrapped_key`` is wrapped by the root key (None once destroyed)."""

    id: str
    version: int
    algorithm: str
    wrapped_key: bytes | None = field(repr=False)
    key_hash: str = field(repr=False)
    status: KeyStatus
    encryption_count: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    destroyed_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def retired_at(self) -> datetime | None:
        value = self.metadata.get(RETIRED_AT)
        return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class NewDataKey:
    """What rotation inserts; the backend fills in status, counts and timestamps."""

    id: str
    version: int
    algorithm: str
    wrapped_key: bytes = field(repr=False)
    key_hash: str = field(repr=False)
    # expires_at = created_at + lifetime (None: no expiry).
    lifetime: timedelta | None
    metadata: Mapping[str, str] = field(default_factory=dict)


# Builds the new key once the backend knows its version (the version is bound into the wrapping).
KeyFactory = Callable[[int], NewDataKey]


@dataclass(frozen=True)
class RotateOutcome:
    record: DataKeyRecord  # the active key after the call
    created: bool  # False: another rotation won and this is its key
    previous_version: int | None


@dataclass(frozen=True)
class KeyStatistics:
    counts: Mapping[str, int]  # by status
    by_algorithm: Mapping[str, int]
    latest_version: int


class KeyStorage(Protocol):
    kind: str  # "database", "file" or "memory"

    async def rotate(self, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        """Atomically retire the active key and save a new active one with version max+1 — but only if
        the active key is still ``expected_active`` (None: only if there is no active key). Otherwise
        return the current active key with ``created=False``."""
        ...

    async def get_active(self) -> DataKeyRecord | None: ...

    async def get_by_version(self, version: int) -> DataKeyRecord | None: ...

    async def all_keys(self) -> list[DataKeyRecord]: ...

    async def list_keys(
        self, *, status: KeyStatus | None = None, before_version: int | None = None, limit: int = 50
    ) -> list[DataKeyRecord]:
        """Newest version first; ``before_version`` pages (versions strictly below it)."""
        ...

    async def mark_status(self, version: int, status: KeyStatus, only_from: Collection[KeyStatus]) -> bool:
        """Set ``status`` if the key is currently in one of ``only_from``; True if it changed."""
        ...

    async def mark_expired(self, now: datetime) -> list[int]:
        """Inactive keys with expires_at <= now become expired; returns their versions."""
        ...

    async def update_expires(self, version: int, expires_at: datetime | None) -> bool: ...

    async def add_encryption_counts(self, counts: Mapping[int, int]) -> None: ...

    async def destroy(self, version: int) -> bool:
        """Erase the material of a retired (inactive/expired) key: status revoked, wrapped key NULL."""
        ...

    async def statistics(self) -> KeyStatistics: ...

    async def close(self) -> None: ...
