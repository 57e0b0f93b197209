"""``AuditSink`` writing KMS events to the ``audit_events`` table (migrations/000003)."""

from __future__ import annotations

import json

import asyncpg

from internal.data.errors import translate_driver_errors
from internal.pkg.log import request_id

ACTOR = "kms"


class PgAuditSink:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def record(self, event: str, outcome: str, details: dict[str, str]) -> None:
        await self._pool.execute(
            "INSERT INTO audit_events (event, outcome, actor, request_id, details) VALUES ($1, $2, $3, $4, $5::jsonb)",
            event[:64],
            outcome[:16],
            ACTOR,
            request_id.get()[:64] or None,
            json.dumps({str(k)[:64]: str(v)[:256] for k, v in details.items()}),
        )
