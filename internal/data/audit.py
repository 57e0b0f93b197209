"""Security audit trail in PostgreSQL (implements ``internal.biz.token.AuditLog``; SECURITY.md item 17).

Callers pass ids, outcomes, reasons and client addresses only — never PII, passwords, codes or tokens.
The request id comes from the logging context so an audit row can be matched to the access log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import asyncpg

from internal.data.errors import translate_driver_errors
from internal.pkg.log import request_id

log = logging.getLogger("audit")


class PgAuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translate_driver_errors
    async def record(
        self,
        event: str,
        outcome: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        details: Mapping[str, str | int | bool] | None = None,
    ) -> None:
        # The same event goes to the log stream, so operators see it next to the RPC line.
        log.info(event, extra={"outcome": outcome, "actor": actor or "", "subject": subject or ""})
        await self._pool.execute(
            """
            INSERT INTO audit_events (event, outcome, actor, subject, request_id, details)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb)
            """,
            event[:64],
            outcome[:16],
            actor[:128] if actor else None,
            subject[:128] if subject else None,
            request_id.get()[:64] or None,
            json.dumps(dict(details or {})),
        )
