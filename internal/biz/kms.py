"""KMS domain: named keys, their versions and policies, the repository and event Protocols, and who may use
which key (docs/api.md "Named keys", docs/operations.md "Keys, policies and destruction").

A named key has its own versions (data keys wrapped by the root key), algorithm, rotation policy and
destruction policy. The key name is bound into every envelope's associated data and into the key's
blind-index key (``internal.pkg.kms``), so nothing made under one key means anything under another.
Names starting ``authkms.`` are reserved for the service's own data: no service credential can use them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from internal.biz.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

DEFAULT_KEY = "default"
RESERVED_PREFIX = "authkms."
# The reserved key under which users' PII (email, phone, name, TOTP secret) is encrypted and blind-indexed.
USERS_KEY = "authkms.users"
KEY_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
DEFAULT_DESTRUCTION_WAIT = timedelta(days=30)
MIN_DESTRUCTION_WAIT = timedelta(days=7)
MAX_DESTRUCTION_WAIT = timedelta(days=365)
MAX_DESCRIPTION_CHARS = 200
MAX_REASON_CHARS = 200
ROTATION_REASON = "rotation_reason"  # version metadata key
RETIRED_AT = "retired_at"  # version metadata key: ISO time it stopped being active


class KeyStatus(StrEnum):
    ACTIVE = "active"  # the one version new values are encrypted with
    INACTIVE = "inactive"  # rotated out: decrypt-only
    EXPIRED = "expired"  # past its rotation date: decrypt-only; expiry never destroys anything
    PENDING_DESTRUCTION = "pending_destruction"  # refuses to decrypt; destroyed after destroy_after
    REVOKED = "revoked"  # destroyed: material erased, row kept for the record


RETIRED = (KeyStatus.INACTIVE, KeyStatus.EXPIRED)


@dataclass(frozen=True)
class KeySpec:
    """What creating a key asks for; None means "the service's configured default"."""

    name: str
    algorithm: str | None = None
    rotate_interval: timedelta | None = None
    rotate_after_encryptions: int | None = None
    destruction_wait: timedelta | None = None
    description: str = ""


@dataclass(frozen=True)
class PolicyChange:
    """A policy update; None leaves that policy as it is."""

    rotate_interval: timedelta | None = None
    rotate_after_encryptions: int | None = None
    destruction_wait: timedelta | None = None
    description: str | None = None


@dataclass(frozen=True)
class NamedKey:
    """A stored named key. ``generation`` grows with every change to the key or its versions, so a replica
    that reads it can tell whether its cache of the key is still current."""

    name: str
    algorithm: str | None
    rotate_interval: timedelta | None
    rotate_after_encryptions: int | None
    destruction_wait: timedelta | None
    description: str
    generation: int
    created_at: datetime
    updated_at: datetime

    @property
    def reserved(self) -> bool:
        return is_reserved(self.name)


@dataclass(frozen=True)
class KeyDefaults:
    """The service's defaults for policies a key leaves unset (configuration ``kms.*``)."""

    algorithm: str
    rotate_interval: timedelta  # zero: no automatic rotation by time
    rotate_after_encryptions: int


@dataclass(frozen=True)
class KeyPolicy:
    """A key's effective policies: its own where set, the service defaults otherwise."""

    algorithm: str
    rotate_interval: timedelta
    rotate_after_encryptions: int
    destruction_wait: timedelta

    @classmethod
    def of(cls, key: NamedKey, defaults: KeyDefaults) -> KeyPolicy:
        return cls(
            algorithm=key.algorithm or defaults.algorithm,
            rotate_interval=key.rotate_interval if key.rotate_interval is not None else defaults.rotate_interval,
            rotate_after_encryptions=key.rotate_after_encryptions or defaults.rotate_after_encryptions,
            destruction_wait=key.destruction_wait or DEFAULT_DESTRUCTION_WAIT,
        )


@dataclass(frozen=True)
class DataKeyRecord:
    """One stored version of a named key. ``wrapped_key`` is wrapped by the root key (None once destroyed)."""

    key_name: str
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
    destroy_after: datetime | None = None
    destroyed_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)
    root_fingerprint: str | None = None  # which root key wrapped it (None: not recorded yet)

    @property
    def retired_at(self) -> datetime | None:
        value = self.metadata.get(RETIRED_AT)
        return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class NewDataKey:
    """What rotation inserts; the repository fills in status, counts and timestamps."""

    id: str
    version: int
    algorithm: str
    wrapped_key: bytes = field(repr=False)
    key_hash: str = field(repr=False)
    lifetime: timedelta | None  # expires_at = created_at + lifetime (None: no expiry)
    metadata: Mapping[str, str] = field(default_factory=dict)
    root_fingerprint: str | None = None


# Builds the new version once the repository knows its number (the number is bound into the wrapping).
KeyFactory = Callable[[int], NewDataKey]


@dataclass(frozen=True)
class RotateOutcome:
    record: DataKeyRecord  # the active version after the call
    created: bool  # False: another rotation won and this is its version
    previous_version: int | None


class KeyRepo(Protocol):
    """Named keys and their versions (``internal.data.kms.PgKeyRepo``, ``internal.data.kms_file.FileKeyRepo``).

    Every change to a key or its versions (not encryption counts) increments the key's ``generation`` in the
    same step."""

    kind: str  # "database" or "file"

    async def create_key(self, spec: KeySpec) -> tuple[NamedKey, bool]:
        """Insert the key unless one with that name exists; (the stored key, whether it was created)."""
        ...

    async def get_key(self, name: str) -> NamedKey | None: ...

    async def list_keys(self, after_name: str, limit: int) -> list[NamedKey]:
        """By name, names strictly after ``after_name``."""
        ...

    async def update_key(self, name: str, change: PolicyChange) -> NamedKey | None: ...

    async def key_states(self) -> dict[str, KeyState]:
        """Every key's state, by name (one cheap read: the periodic cache re-check)."""
        ...

    async def rotate(self, name: str, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        """Atomically retire the key's active version and add a new active one numbered max+1, but only if the
        active version is still ``expected_active`` (None: only if there is none). Otherwise return the
        current active version with ``created=False``."""
        ...

    async def get_active(self, name: str) -> DataKeyRecord | None: ...

    async def get_version(self, name: str, version: int) -> DataKeyRecord | None: ...

    async def all_versions(self) -> list[DataKeyRecord]:
        """Every version of every key (start-up proves the root key opens them all)."""
        ...

    async def list_versions(
        self, name: str, *, status: KeyStatus | None, before_version: int | None, limit: int
    ) -> list[DataKeyRecord]:
        """Newest version first; ``before_version`` pages (versions strictly below it)."""
        ...

    async def mark_expired(self, name: str, now: datetime) -> list[int]:
        """Inactive versions with expires_at <= now become expired; returns their numbers."""
        ...

    async def add_encryption_counts(self, counts: Mapping[tuple[str, int], int]) -> None: ...

    async def schedule_destruction(self, name: str, version: int, destroy_after: datetime) -> DataKeyRecord | None:
        """Retired (inactive/expired) → pending_destruction; None if the version is not retired."""
        ...

    async def cancel_destruction(self, name: str, version: int) -> DataKeyRecord | None:
        """pending_destruction → inactive; None if it was not pending."""
        ...

    async def destroy(self, name: str, version: int, now: datetime) -> bool:
        """Erase the material of a pending version whose destroy_after <= now: status revoked."""
        ...

    async def statistics(self, name: str) -> dict[str, int]:
        """Number of versions by status."""
        ...

    async def rewrap(self, record: DataKeyRecord, wrapped_key: bytes, key_hash: str, root_fingerprint: str) -> bool:
        """Replace a version's wrapping, only if it still holds ``record.wrapped_key`` (compare and set)."""
        ...

    async def record_root_fingerprint(self, record: DataKeyRecord, root_fingerprint: str) -> None:
        """Note which root key wraps a version whose fingerprint was not recorded yet."""
        ...

    async def service_secret(self) -> StoredSecret | None:
        """The wrapped service secret, once a root-key rotation has stored it."""
        ...

    async def put_service_secret(self, secret: StoredSecret, expected: StoredSecret | None) -> bool:
        """Store ``secret`` only if the stored one is still ``expected`` (None: none stored); True if stored."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class StoredSecret:
    wrapped: bytes = field(repr=False)
    root_fingerprint: str


@dataclass(frozen=True)
class KeyState:
    """What the periodic re-check reads of each key: has it changed, and how much is its active version used."""

    generation: int
    active_encryptions: int


@dataclass(frozen=True)
class KeyEvent:
    """Told to every replica after a change to a key, so each drops what it cached of that key."""

    kind: str  # "created", "rotated", "updated", "destruction_scheduled", "destruction_cancelled", "destroyed"
    key_name: str
    version: int
    origin: str  # instance id of the publishing replica


# Called with an event, or with None when events may have been missed (resynchronize everything).
EventHandler = Callable[[KeyEvent | None], Awaitable[None]]


class KeyEvents(Protocol):
    """Cross-replica notification (``internal.data.kms_events.RedisKeyEvents``); best effort, the periodic
    generation re-check is the bound."""

    async def start(self, handler: EventHandler) -> None: ...

    async def publish(self, event: KeyEvent) -> None: ...

    async def close(self) -> None: ...


class NoKeyEvents:
    """A single process: nothing to tell; the periodic re-check still runs."""

    async def start(self, handler: EventHandler) -> None:
        return None

    async def publish(self, event: KeyEvent) -> None:
        return None

    async def close(self) -> None:
        return None


def is_reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIX)


def key_name_or_default(name: str) -> str:
    """The key a request names (empty: ``default``); VALIDATION_ERROR for a malformed name."""
    if not name:
        return DEFAULT_KEY
    if type(name) is not str or not KEY_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            "VALIDATION_ERROR",
            "key_name must match ^[a-z][a-z0-9_.-]{0,62}$",
            {"field": "key_name"},
        )
    return name


def validate_key_pattern(pattern: str) -> str:
    """A credential's key pattern: an exact key name or ``prefix.*``; reserved names are refused."""
    stem = pattern[:-2] if pattern.endswith(".*") else pattern
    if not KEY_NAME_PATTERN.fullmatch(stem) or is_reserved(stem + ("." if pattern.endswith(".*") else "")):
        raise InvalidArgument(
            "VALIDATION_ERROR",
            "key patterns are key names or prefix.* (e.g. orders, payments.*); authkms.* is reserved",
        )
    return pattern


def key_matcher(patterns: Collection[str]) -> Callable[[str], bool]:
    """Whether a credential with ``patterns`` may use a key, by the key's name. Reserved keys: never.

    The patterns are split once into exact names and ``prefix.`` stems: a credential checks a key on every KMS
    call, and a set lookup with one ``startswith`` costs a fifth of matching the patterns one by one."""
    exact = frozenset(p for p in patterns if not p.endswith(".*"))
    stems = tuple(p[:-1] for p in patterns if p.endswith(".*"))

    def allowed(name: str) -> bool:
        return not name.startswith(RESERVED_PREFIX) and (name in exact or name.startswith(stems))

    return allowed


def key_denied(name: str) -> PermissionDenied:
    """The one answer for a key outside a credential, whether or not the key exists."""
    return PermissionDenied("PERMISSION_DENIED", "this credential may not use that key", {"key_name": name})


def key_not_found(name: str, version: int | None = None) -> NotFound:
    metadata = {"key_name": name} | ({"key_version": str(version)} if version is not None else {})
    what = "no usable version of that key" if version is not None else "no key with that name"
    return NotFound("KEY_NOT_FOUND", what, metadata)


def pending_destruction(record: DataKeyRecord) -> FailedPrecondition:
    destroy_after = int(record.destroy_after.timestamp()) if record.destroy_after else 0
    return FailedPrecondition(
        "KEY_PENDING_DESTRUCTION",
        "this key version is scheduled for destruction and refuses to decrypt; cancel the destruction to use it",
        {"key_name": record.key_name, "key_version": str(record.version), "destroy_after": str(destroy_after)},
    )


def not_initialized() -> FailedPrecondition:
    return FailedPrecondition("KMS_NOT_INITIALIZED", "the KMS is not initialized")
