"""Security audit trail in PostgreSQL (implements ``internal.biz.ports.AuditLog``; docs/security.md item 17).

The one writer of ``audit_events``, with one bounding rule: every text is cut to its column's width and
every detail to ``MAX_DETAIL_KEYS`` entries of at most ``MAX_DETAIL_KEY_CHARS``/``MAX_DETAIL_CHARS``, so no
caller can make a row unbounded and none needs to cut its own. Which events are written at all is biz's
decision (``internal.biz.audit``). Callers pass ids, outcomes, reasons and client addresses only — never
PII, passwords, codes or tokens. The request id comes from the logging context so an audit row can be
matched to the access log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import asyncpg

from internal.data.errors import translate_driver_errors
from internal.pkg.log import request_id

log = logging.getLogger("audit")

# Column widths (migration 000003) and the bounds of the details object.
_EVENT, _OUTCOME, _PARTY, _REQUEST_ID = 64, 16, 128, 64
MAX_DETAIL_KEYS = 32
MAX_DETAIL_KEY_CHARS = 64
MAX_DETAIL_CHARS = 200


def _cut(text: str | None, limit: int) -> str | None:
    return text[:limit] if text else None


def bounded_details(details: Mapping[str, str | int | bool] | None) -> dict[str, str | int | bool]:
    """The details as stored: the first ``MAX_DETAIL_KEYS`` entries, keys and text values cut."""
    items = list((details or {}).items())[:MAX_DETAIL_KEYS]
    return {k[:MAX_DETAIL_KEY_CHARS]: v[:MAX_DETAIL_CHARS] if isinstance(v, str) else v for k, v in items}


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
        event, outcome = event[:_EVENT], outcome[:_OUTCOME]
        actor, subject = _cut(actor, _PARTY), _cut(subject, _PARTY)
        # The same event goes to the log stream, so operators see it next to the RPC line.
        log.info(event, extra={"outcome": outcome, "actor": actor or "", "subject": subject or ""})
        await self._pool.execute(
            """
            INSERT INTO audit_events (event, outcome, actor, subject, request_id, details)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb)
            """,
            event,
            outcome,
            actor,
            subject,
            _cut(request_id.get(), _REQUEST_ID),
            json.dumps(bounded_details(details)),
        )

    @translate_driver_errors
    async def forget_clients(self, party: str) -> int:
        """Strip the client addresses from every row about ``party`` (a deleted account); returns rows changed."""
        status = await self._pool.execute(
            """
            UPDATE audit_events SET details = details - 'client'
             WHERE (subject = $1 OR actor = $1) AND details ? 'client'
            """,
            _cut(party, _PARTY),
        )
        return int(status.split()[-1])
