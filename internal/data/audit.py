"""Security audit trail in PostgreSQL (implements ``internal.biz.token.AuditLog``; docs/security.md item 17).

Callers pass ids, outcomes, reasons and client addresses only — never PII, passwords, codes or tokens.
The request id comes from the logging context so an audit row can be matched to the access log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from internal.biz.captcha import RateLimiter
from internal.biz.token import AuditLog
from internal.data.errors import translate_driver_errors
from internal.pkg.log import request_id, request_network

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


class DenialAuditLimit:
    """An ``AuditLog`` in front of another that bounds the rows anonymous refused calls can write.

    A call refused before anyone is identified (``access.denied`` without an actor: no credential, or
    an unknown one) costs the caller nothing and an audit row each, so a flood would fill the table.
    Per client network (IPv4 /24, IPv6 /64) at most ``limit`` such rows are written per ``window``; the
    rest are counted in Redis and the next row written for that network carries the count as
    ``suppressed``. Every other event passes through untouched.
    """

    def __init__(
        self,
        audit: AuditLog,
        limiter: RateLimiter,
        redis: Any,
        key_prefix: str = "",
        limit: int = 20,
        window: float = 60,
    ) -> None:
        self._audit = audit
        self._limiter = limiter
        self._redis = redis
        self._prefix = key_prefix
        self._limit = limit
        self._window = window

    async def record(
        self,
        event: str,
        outcome: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        details: Mapping[str, str | int | bool] | None = None,
    ) -> None:
        if event != "access.denied" or actor is not None:
            await self._audit.record(event, outcome, actor=actor, subject=subject, details=details)
            return
        network = request_network.get() or "unknown"
        suppressed_key = f"{self._prefix}audit-denied-suppressed:{network}"
        verdict = await self._limiter.hit(f"audit-denied:{network}", self._limit, self._window)
        if not verdict.allowed:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(suppressed_key)
                pipe.expire(suppressed_key, 86_400)
                await pipe.execute()
            return
        suppressed = int(await self._redis.getdel(suppressed_key) or 0)
        extra: dict[str, str | int | bool] = {"network": network, **({"suppressed": suppressed} if suppressed else {})}
        await self._audit.record(event, outcome, subject=subject, details={**(details or {}), **extra})
