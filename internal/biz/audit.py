"""Which audit events are written: the bound on rows that anonymous refused calls can cause.

A call refused before anyone is identified (``access.denied`` without an actor: no credential, or an unknown
one) costs the caller nothing and an audit row each, so a flood would fill the table. Per client network
(IPv4 /24, IPv6 /64, from the request context) at most ``limit`` such rows are written per ``window``; the
rest are counted (``SuppressedDenials``) and the next row written for that network carries the count as
``suppressed``. Every other event passes through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from internal.biz.ports import AuditLog, RateLimiter
from internal.pkg.log import request_network

DENIED = "access.denied"


class SuppressedDenials(Protocol):
    """Per-network count of refused calls left out of the trail (``internal.data.audit_suppressed``)."""

    async def add(self, network: str) -> None: ...

    async def take(self, network: str) -> int:
        """The count so far, reset to zero."""
        ...


class DenialAuditLimit:
    """An ``AuditLog`` in front of the real one, bounding anonymous ``access.denied`` rows per client network."""

    def __init__(
        self,
        audit: AuditLog,
        limiter: RateLimiter,
        suppressed: SuppressedDenials,
        limit: int = 20,
        window: float = 60,
    ) -> None:
        self._audit = audit
        self._limiter = limiter
        self._suppressed = suppressed
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
        if event != DENIED or actor is not None:
            await self._audit.record(event, outcome, actor=actor, subject=subject, details=details)
            return
        network = request_network.get() or "unknown"
        verdict = await self._limiter.hit(f"audit-denied:{network}", self._limit, self._window)
        if not verdict.allowed:
            await self._suppressed.add(network)
            return
        suppressed = await self._suppressed.take(network)
        extra: dict[str, str | int | bool] = {"network": network, **({"suppressed": suppressed} if suppressed else {})}
        await self._audit.record(event, outcome, subject=subject, details={**(details or {}), **extra})
