"""Service credentials in PostgreSQL (only token hashes are stored)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from internal.biz.credentials import ServiceCredential
from internal.biz.errors import Conflict
from internal.data.errors import translate_driver_errors

_COLUMNS = "id, name, scopes, created_at, revoked_at, key_patterns"


def _credential(row: asyncpg.Record) -> ServiceCredential:
    return ServiceCredential(
        id=str(row["id"]),
        name=row["name"],
        scopes=frozenset(row["scopes"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        key_patterns=tuple(row["key_patterns"]),
    )


class PgCredentialRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def create(
        self, name: str, token_hash: str, scopes: Sequence[str], key_patterns: Sequence[str]
    ) -> ServiceCredential:
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO service_credentials (id, name, token_hash, scopes, key_patterns) "
                f"VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                uuid.uuid4(),
                name,
                token_hash,
                list(scopes),
                list(key_patterns),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("CREDENTIAL_EXISTS", "a credential with that name already exists") from None
        assert row is not None  # INSERT … RETURNING always yields the row
        return _credential(row)

    @translate_driver_errors
    async def find_active_by_hash(self, token_hash: str) -> ServiceCredential | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM service_credentials WHERE token_hash = $1 AND revoked_at IS NULL", token_hash
        )
        return _credential(row) if row else None

    @translate_driver_errors
    async def revoke(self, name: str) -> bool:
        result = await self._pool.execute(
            "UPDATE service_credentials SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
        )
        return result.endswith(" 1")

    @translate_driver_errors
    async def list(self) -> list[ServiceCredential]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM service_credentials ORDER BY name")
        return [_credential(r) for r in rows]
