"""``KeyRepo`` on PostgreSQL: the ``kms_keys`` and ``kms_data_keys`` tables (migrations/000002, 000006).

Rotation is one transaction that first locks the named key's ``kms_keys`` row, so concurrent rotations of
one key from any number of processes run one after the other; each re-reads the active version after
taking the lock and only rotates if it is still the version the caller meant to replace. The partial unique
index (one active version per key) and UNIQUE(key_name, version) remain the last line of defence: a
UniqueViolation is answered with the winner's version, never an error. Every change bumps the key's
``generation`` in the same transaction, which is how other replicas notice it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from internal.biz.kms import (
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
from internal.data.errors import translate_driver_errors

_VERSION_COLUMNS = (
    "key_name, id, version, algorithm, encrypted_key, key_hash, status, encryption_count, created_at, updated_at, "
    "expires_at, destroy_after, destroyed_at, metadata, root_fingerprint"
)
_KEY_COLUMNS = (
    "name, algorithm, rotate_interval, rotate_after_encryptions, destruction_wait, description, generation, "
    "created_at, updated_at"
)
_BUMP = "UPDATE kms_keys SET generation = generation + 1 WHERE name = $1"


def _version(row: Any) -> DataKeyRecord:
    metadata = row["metadata"]
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return DataKeyRecord(
        key_name=row["key_name"],
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
        destroy_after=row["destroy_after"],
        destroyed_at=row["destroyed_at"],
        metadata={str(k): str(v) for k, v in (metadata or {}).items()},
        root_fingerprint=row["root_fingerprint"],
    )


def _key(row: Any) -> NamedKey:
    return NamedKey(
        name=row["name"],
        algorithm=row["algorithm"],
        rotate_interval=row["rotate_interval"],
        rotate_after_encryptions=row["rotate_after_encryptions"],
        destruction_wait=row["destruction_wait"],
        description=row["description"],
        generation=int(row["generation"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PgKeyRepo:
    kind = "database"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def create_key(self, spec: KeySpec) -> tuple[NamedKey, bool]:
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO kms_keys (name, algorithm, rotate_interval, rotate_after_encryptions, destruction_wait,
                                  description)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (name) DO NOTHING
            RETURNING {_KEY_COLUMNS}
            """,
            spec.name,
            spec.algorithm,
            spec.rotate_interval,
            spec.rotate_after_encryptions,
            spec.destruction_wait,
            spec.description,
        )
        if row is not None:
            return _key(row), True
        existing = await self.get_key(spec.name)
        assert existing is not None  # the conflict was on this name, and keys are never deleted
        return existing, False

    @translate_driver_errors
    async def get_key(self, name: str) -> NamedKey | None:
        row = await self._pool.fetchrow(f"SELECT {_KEY_COLUMNS} FROM kms_keys WHERE name = $1", name)
        return _key(row) if row is not None else None

    @translate_driver_errors
    async def list_keys(self, after_name: str, limit: int) -> list[NamedKey]:
        rows = await self._pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM kms_keys WHERE name > $1 ORDER BY name LIMIT $2", after_name, limit
        )
        return [_key(r) for r in rows]

    @translate_driver_errors
    async def update_key(self, name: str, change: PolicyChange) -> NamedKey | None:
        row = await self._pool.fetchrow(
            f"""
            UPDATE kms_keys
               SET rotate_interval = COALESCE($2, rotate_interval),
                   rotate_after_encryptions = COALESCE($3, rotate_after_encryptions),
                   destruction_wait = COALESCE($4, destruction_wait),
                   description = COALESCE($5, description),
                   generation = generation + 1
             WHERE name = $1
            RETURNING {_KEY_COLUMNS}
            """,
            name,
            change.rotate_interval,
            change.rotate_after_encryptions,
            change.destruction_wait,
            change.description,
        )
        return _key(row) if row is not None else None

    @translate_driver_errors
    async def key_states(self) -> dict[str, KeyState]:
        rows = await self._pool.fetch(
            """
            SELECT k.name, k.generation, COALESCE(d.encryption_count, 0) AS active_encryptions
              FROM kms_keys k LEFT JOIN kms_data_keys d ON d.key_name = k.name AND d.status = 'active'
            """
        )
        return {r["name"]: KeyState(int(r["generation"]), int(r["active_encryptions"])) for r in rows}

    @translate_driver_errors
    async def rotate(self, name: str, expected_active: int | None, make_key: KeyFactory) -> RotateOutcome:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT 1 FROM kms_keys WHERE name = $1 FOR UPDATE", name)
                current = await conn.fetchrow(
                    f"SELECT {_VERSION_COLUMNS} FROM kms_data_keys WHERE key_name = $1 AND status = 'active'", name
                )
                current_version = int(current["version"]) if current is not None else None
                # No active version at all is always replaced: a key must end with exactly one.
                if current is not None and current_version != expected_active:
                    return RotateOutcome(_version(current), created=False, previous_version=current_version)
                next_version = int(
                    await conn.fetchval(
                        "SELECT COALESCE(max(version), 0) + 1 FROM kms_data_keys WHERE key_name = $1", name
                    )
                )
                new = make_key(next_version)
                await conn.execute(
                    """
                    UPDATE kms_data_keys
                       SET status = 'inactive', metadata = metadata || jsonb_build_object($2::text, $3::text)
                     WHERE key_name = $1 AND status = 'active'
                    """,
                    name,
                    RETIRED_AT,
                    datetime.now(UTC).isoformat(),
                )
                row = await conn.fetchrow(
                    f"""
                    INSERT INTO kms_data_keys (key_name, id, version, algorithm, encrypted_key, key_hash, status,
                                               expires_at, metadata, root_fingerprint)
                    VALUES ($1, $2::uuid, $3, $4, $5, $6, 'active', now() + $7::interval, $8::jsonb, $9)
                    RETURNING {_VERSION_COLUMNS}
                    """,
                    name,
                    new.id,
                    new.version,
                    new.algorithm,
                    new.wrapped_key,
                    new.key_hash,
                    new.lifetime,
                    json.dumps(dict(new.metadata)),
                    new.root_fingerprint,
                )
                await conn.execute(_BUMP, name)
                return RotateOutcome(_version(row), created=True, previous_version=current_version)
        except asyncpg.UniqueViolationError:
            winner = await self.get_active(name)
            if winner is None:
                raise
            return RotateOutcome(winner, created=False, previous_version=expected_active)

    @translate_driver_errors
    async def get_active(self, name: str) -> DataKeyRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_VERSION_COLUMNS} FROM kms_data_keys WHERE key_name = $1 AND status = 'active'", name
        )
        return _version(row) if row is not None else None

    @translate_driver_errors
    async def get_version(self, name: str, version: int) -> DataKeyRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_VERSION_COLUMNS} FROM kms_data_keys WHERE key_name = $1 AND version = $2", name, version
        )
        return _version(row) if row is not None else None

    @translate_driver_errors
    async def all_versions(self) -> list[DataKeyRecord]:
        rows = await self._pool.fetch(f"SELECT {_VERSION_COLUMNS} FROM kms_data_keys ORDER BY key_name, version")
        return [_version(r) for r in rows]

    @translate_driver_errors
    async def list_versions(
        self, name: str, *, status: KeyStatus | None, before_version: int | None, limit: int
    ) -> list[DataKeyRecord]:
        rows = await self._pool.fetch(
            f"""
            SELECT {_VERSION_COLUMNS} FROM kms_data_keys
             WHERE key_name = $1 AND ($2::text IS NULL OR status = $2) AND ($3::int IS NULL OR version < $3)
             ORDER BY version DESC LIMIT $4
            """,
            name,
            status.value if status else None,
            before_version,
            limit,
        )
        return [_version(r) for r in rows]

    @translate_driver_errors
    async def mark_expired(self, name: str, now: datetime) -> list[int]:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE kms_data_keys SET status = 'expired'
                 WHERE key_name = $1 AND status = 'inactive' AND expires_at IS NOT NULL AND expires_at <= $2
                RETURNING version
                """,
                name,
                now,
            )
            if rows:
                await conn.execute(_BUMP, name)
        return sorted(int(r["version"]) for r in rows)

    @translate_driver_errors
    async def add_encryption_counts(self, counts: Mapping[tuple[str, int], int]) -> None:
        items = [(name, v, n) for (name, v), n in counts.items() if n > 0]
        if not items:
            return
        await self._pool.execute(
            """
            UPDATE kms_data_keys AS k SET encryption_count = k.encryption_count + c.n
              FROM unnest($1::text[], $2::int[], $3::bigint[]) AS c(key_name, version, n)
             WHERE k.key_name = c.key_name AND k.version = c.version
            """,
            [name for name, _, _ in items],
            [v for _, v, _ in items],
            [n for _, _, n in items],
        )

    async def _change_status(self, name: str, version: int, sql: str, *args: Any) -> DataKeyRecord | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(sql, name, version, *args)
            if row is not None:
                await conn.execute(_BUMP, name)
        return _version(row) if row is not None else None

    @translate_driver_errors
    async def schedule_destruction(self, name: str, version: int, destroy_after: datetime) -> DataKeyRecord | None:
        return await self._change_status(
            name,
            version,
            f"""
            UPDATE kms_data_keys SET status = 'pending_destruction', destroy_after = $3
             WHERE key_name = $1 AND version = $2 AND status IN ('inactive', 'expired')
            RETURNING {_VERSION_COLUMNS}
            """,
            destroy_after,
        )

    @translate_driver_errors
    async def cancel_destruction(self, name: str, version: int) -> DataKeyRecord | None:
        return await self._change_status(
            name,
            version,
            f"""
            UPDATE kms_data_keys SET status = 'inactive', destroy_after = NULL
             WHERE key_name = $1 AND version = $2 AND status = 'pending_destruction'
            RETURNING {_VERSION_COLUMNS}
            """,
        )

    @translate_driver_errors
    async def destroy(self, name: str, version: int, now: datetime) -> bool:
        destroyed = await self._change_status(
            name,
            version,
            f"""
            UPDATE kms_data_keys SET status = 'revoked', encrypted_key = NULL, destroyed_at = now()
             WHERE key_name = $1 AND version = $2 AND status = 'pending_destruction' AND destroy_after <= $3
            RETURNING {_VERSION_COLUMNS}
            """,
            now,
        )
        return destroyed is not None

    @translate_driver_errors
    async def statistics(self, name: str) -> dict[str, int]:
        rows = await self._pool.fetch(
            "SELECT status, sum(key_count) AS n FROM kms_data_key_statistics WHERE key_name = $1 GROUP BY status", name
        )
        counts = {s.value: 0 for s in KeyStatus}
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    @translate_driver_errors
    async def rewrap(self, record: DataKeyRecord, wrapped_key: bytes, key_hash: str, root_fingerprint: str) -> bool:
        result = await self._pool.execute(
            """
            UPDATE kms_data_keys SET encrypted_key = $4, key_hash = $5, root_fingerprint = $6
             WHERE key_name = $1 AND version = $2 AND encrypted_key = $3
            """,
            record.key_name,
            record.version,
            record.wrapped_key,
            wrapped_key,
            key_hash,
            root_fingerprint,
        )
        return result.endswith(" 1")

    @translate_driver_errors
    async def record_root_fingerprint(self, record: DataKeyRecord, root_fingerprint: str) -> None:
        await self._pool.execute(
            "UPDATE kms_data_keys SET root_fingerprint = $4 "
            "WHERE key_name = $1 AND version = $2 AND encrypted_key = $3 AND root_fingerprint IS NULL",
            record.key_name,
            record.version,
            record.wrapped_key,
            root_fingerprint,
        )

    @translate_driver_errors
    async def service_secret(self) -> StoredSecret | None:
        row = await self._pool.fetchrow("SELECT wrapped, root_fingerprint FROM kms_service_secret WHERE id = 1")
        return StoredSecret(bytes(row["wrapped"]), row["root_fingerprint"]) if row is not None else None

    @translate_driver_errors
    async def put_service_secret(self, secret: StoredSecret, expected: StoredSecret | None) -> bool:
        if expected is None:
            result = await self._pool.execute(
                "INSERT INTO kms_service_secret (id, wrapped, root_fingerprint) VALUES (1, $1, $2) "
                "ON CONFLICT (id) DO NOTHING",
                secret.wrapped,
                secret.root_fingerprint,
            )
        else:
            result = await self._pool.execute(
                "UPDATE kms_service_secret SET wrapped = $1, root_fingerprint = $2 WHERE id = 1 AND wrapped = $3",
                secret.wrapped,
                secret.root_fingerprint,
                expected.wrapped,
            )
        return result.endswith(" 1")

    async def close(self) -> None:
        """The pool belongs to the application container; nothing to close here."""
