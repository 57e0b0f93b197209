"""What every use case shares: who is calling, the audit trail and the shared rate limiter.

The ports here are implemented in ``internal.data`` (``audit.PgAuditLog``, ``ratelimit.RedisRateLimiter``);
the ports of a single use case stay beside it (``user.UserRepo``, ``token.SessionRepo``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

ADMIN_SCOPE = "auth.admin"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user (from an access token) or a service credential with scopes.

    Use cases decide with ``may_act_for`` so a new kind of caller (an admin credential carrying
    ``auth.admin``) needs no change in them.
    """

    user_id: int | None = None
    username: str = ""
    scopes: frozenset[str] = frozenset()
    token_id: str = ""
    session_id: str = ""
    expires_at: int = 0

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def may_act_for(self, user_id: int) -> bool:
        return self.user_id == user_id or self.is_admin


class AuditLog(Protocol):
    """Security audit trail (``internal.data.audit.PgAuditLog``; docs/security.md item 17). Never pass PII."""

    async def record(
        self,
        event: str,
        outcome: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        details: Mapping[str, str | int | bool] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after: float  # seconds until a hit would be allowed again; 0 when allowed


class RateLimiter(Protocol):
    """Shared sliding-window limiter (``internal.data.ratelimit.RedisRateLimiter``), atomic across replicas."""

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        """Count one event in ``bucket``; allowed while at most ``limit`` fall in the window."""
        ...
