"""``KeyStorage`` on PostgreSQL (the ``kms_data_keys`` table of migrations/000002).

Rotation is one transaction under a transaction-scoped advisory lock, so concurrent rotations from
any number of processes run one after the other; each re-reads the active key after taking the lock and
only rotates if it is still the version the caller meant to replace. The partial unique index (one
active row) and UNIQUE(version) remain the last line of defence: a UniqueViolation is answered with the
winner's key, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from internal.data.errors import translate_driver_errors
from internal.pkg.kms.storage import (
    RETIRED_AT,
    DataKeyRecord,
    KeyFactory,
    KeyStatistics,
    KeyStatus,
    RotateOutcome,
)

# Arbitrary constant shared by every replica ("kmsr").
_ROTATE_LOCK = 0x6B6D_7372
_COLUMNS = (
    "id, version, algorithm, encrypted_key, key_hash, status, encryption_count, created_at, updated_at, "
    "expires_at, destroyed_at, metadata"
)


def _record(row: Any) -> DataKeyRecord:
    metadata = row["metadata"]
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return DataKeyRecord(
        id=str(row["id"]),
        version=int(row["version"]),
        algorithm=row["algorithm"],
        wrapped_key=bytes(row["encrypted_key"]) if row["encrypted_key"] is not None else None,
        key_hash=row["key_hash"].strip(),
        status=KeyStatus(row["status"]),
        encryption_count=int(row["encryption_count"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        destroyed_at=row["destroyed_at"],
        metadata={str(k): str(v) for k, v in (metadata or {}).items()},
    )


class PgKeyStorage:
    kind = "database"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def rotate(self, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATE_LOCK)
                current = await conn.fetchrow(f"SELECT {_COLUMNS} FROM kms_data_keys WHERE status = 'active'")
                current_version = int(current["version"]) if current is not None else None
                # No active key at all (empty table, or retired by hand) is always replaced: the table
                # must end with exactly one active key.
                if current is not None and current_version != expected_active:
                    return RotateOutcome(_record(current), created=False, previous_version=current_version)
                next_version = int(await conn.fetchval("SELECT COALESCE(max(version), 0) + 1 FROM kms_data_keys"))
                new = make_key(next_version)
                await conn.execute(
                    """
                    UPDATE kms_data_keys
                       SET status = 'inactive', metadata = metadata || jsonb_build_object($1::text, $2::text)
                     WHERE status = 'active'
                    """,
                    RETIRED_AT,
                    datetime.now(UTC).isoformat(),
                )
                row = await conn.fetchrow(
                    f"""
                    INSERT INTO kms_data_keys (id, version, algorithm, encrypted_key, key_hash, status,
                                               expires_at, metadata)
                    VALUES ($1::uuid, $2, $3, $4, $5, 'active', now() + $6::interval, $7::jsonb)
                    RETURNING {_COLUMNS}
                    """,
                    new.id,
                    new.version,
                    new.algorithm,
                    new.wrapped_key,
                    new.key_hash,
                    new.lifetime,
                    json.dumps(dict(new.metadata)),
                )
                return RotateOutcome(_record(row), created=True, previous_version=current_version)
        except asyncpg.UniqueViolationError:
            winner = await self.get_active()
            if winner is None:
                raise
            return RotateOutcome(winner, created=False, previous_version=expected_active)

    @translate_driver_errors
    async def get_active(self) -> DataKeyRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM kms_data_keys WHERE status = 'active'")
        return _record(row) if row is not None else None

    @translate_driver_errors
    async def get_by_version(self, version: int) -> DataKeyRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM kms_data_keys WHERE version = $1", version)
        return _record(row) if row is not None else None

    @translate_driver_errors
    async def all_keys(self) -> list[DataKeyRecord]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM kms_data_keys ORDER BY version")
        return [_record(r) for r in rows]

    @translate_driver_errors
    async def list_keys(
        self, *, status: KeyStatus | None = None, before_version: int | None = None, limit: int = 50
    ) -> list[DataKeyRecord]:
        rows = await self._pool.fetch(
            f"""
            SELECT {_COLUMNS} FROM kms_data_keys
             WHERE ($1::text IS NULL OR status = $1) AND ($2::int IS NULL OR version < $2)
             ORDER BY version DESC LIMIT $3
            """,
            status.value if status else None,
            before_version,
            limit,
        )
        return [_record(r) for r in rows]

    @translate_driver_errors
    async def mark_status(self, version: int, status: KeyStatus, only_from: Collection[KeyStatus]) -> bool:
        if status is KeyStatus.REVOKED:
            return False  # only destroy() revokes: it also erases the material
        result = await self._pool.execute(
            "UPDATE kms_data_keys SET status = $2 WHERE version = $1 AND status = ANY($3::text[])",
            version,
            status.value,
            [s.value for s in only_from],
        )
        return result.endswith(" 1")

    @translate_driver_errors
    async def mark_expired(self, now: datetime) -> list[int]:
        rows = await self._pool.fetch(
            """
            UPDATE kms_data_keys SET status = 'expired'
             WHERE status = 'inactive' AND expires_at IS NOT NULL AND expires_at <= $1
            RETURNING version
            """,
            now,
        )
        return sorted(int(r["version"]) for r in rows)

    @translate_driver_errors
    async def update_expires(self, version: int, expires_at: datetime | None) -> bool:
        result = await self._pool.execute(
            "UPDATE kms_data_keys SET expires_at = $2 WHERE version = $1 AND status <> 'revoked'", version, expires_at
        )
        return result.endswith(" 1")

    @translate_driver_errors
    async def add_encryption_counts(self, counts: Mapping[int, int]) -> None:
        items = [(v, n) for v, n in counts.items() if n > 0]
        if not items:
            return
        await self._pool.execute(
            """
            UPDATE kms_data_keys AS k SET encryption_count = k.encryption_count + c.n
              FROM unnest($1::int[], $2::bigint[]) AS c(version, n)
             WHERE k.version = c.version
            """,
            [v for v, _ in items],
            [n for _, n in items],
        )

    @translate_driver_errors
    async def destroy(self, version: int) -> bool:
        result = await self._pool.execute(
            """
            UPDATE kms_data_keys
               SET status = 'revoked', encrypted_key = NULL, destroyed_at = now()
             WHERE version = $1 AND status IN ('inactive', 'expired')
            """,
            version,
        )
        return result.endswith(" 1")

    @translate_driver_errors
    async def statistics(self) -> KeyStatistics:
        rows = await self._pool.fetch(
            "SELECT status, algorithm, key_count, latest_version FROM kms_data_key_statistics"
        )
        counts: dict[str, int] = {s.value: 0 for s in KeyStatus}
        by_algorithm: dict[str, int] = {}
        latest = 0
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + int(row["key_count"])
            by_algorithm[row["algorithm"]] = by_algorithm.get(row["algorithm"], 0) + int(row["key_count"])
            latest = max(latest, int(row["latest_version"] or 0))
        return KeyStatistics(counts=counts, by_algorithm=by_algorithm, latest_version=latest)

    async def close(self) -> None:
        """The pool belongs to the application container; nothing to close here."""
