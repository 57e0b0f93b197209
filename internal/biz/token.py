"""Access and refresh tokens, sessions (refresh-token families) and revocation.

* Access tokens are JWTs signed by a ``TokenSigner`` (EdDSA by default; HS256 opt-in). Besides the
  registered claims they carry ``sid``, the refresh-token family ("session") they belong to, so one
  revocation of the family ends every access token issued in it.
* Refresh tokens are opaque 256-bit random strings; only their SHA-256 is stored. Each use rotates
  them (docs/security.md item 13): the old one is consumed atomically in PostgreSQL, a second use of it
  revokes the whole family and answers ``REFRESH_TOKEN_REUSED``. A family has an absolute lifetime
  that rotation never extends.
* Revocation (logout, reuse) is durable in PostgreSQL; Redis only caches it (``SessionRepo``).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from internal.biz.errors import PermissionDenied, Unauthenticated
from internal.biz.ports import AuditLog, Caller

if TYPE_CHECKING:
    from internal.conf.config import Auth

ACCESS = "access"
INTROSPECT_SCOPE = "auth.introspect"
_REFRESH_TOKEN_BYTES = 32  # 256 bits
_REFRESH_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")
MAX_TOKEN_CHARS = 4096
_DECIMAL = re.compile(r"[0-9]{1,19}")  # not str.isdigit(): it accepts "²", which int() refuses


@dataclass(frozen=True)
class VerifiedToken:
    """Claims of a JWT whose signature, algorithm, issuer, audience and times were checked."""

    claims: Mapping[str, Any]
    kid: str


class TokenSigner(Protocol):
    """Signs and verifies access tokens (implemented by ``internal.data.signing_keys.JwtSigner``).

    ``sign`` adds ``iss``, ``aud`` and the ``kid`` header. ``verify`` accepts only the configured
    algorithm and raises ``Unauthenticated`` with ``TOKEN_EXPIRED`` or ``TOKEN_INVALID``.
    """

    @property
    def algorithm(self) -> str: ...

    def sign(self, claims: Mapping[str, Any]) -> str: ...

    def verify(self, token: str) -> VerifiedToken: ...

    def jwks(self) -> list[dict[str, str]]:
        """Public JWKs (RFC 7517); empty for HS256, whose key cannot be published."""
        ...


class Rotation(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"
    REUSED = "reused"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class RotationResult:
    outcome: Rotation
    family_id: str = ""
    user_id: int = 0


class SessionRepo(Protocol):
    """Refresh-token families and revocations (``internal.data.session.PgSessionRepo``)."""

    async def start_family(
        self,
        family_id: str,
        user_id: int,
        family_ttl: timedelta,
        token_hash: str,
        token_ttl: timedelta,
        client_addr: str = "",
        user_agent: str = "",
    ) -> None: ...

    async def rotate_refresh_token(
        self, old_hash: str, new_hash: str, token_ttl: timedelta, client_addr: str = ""
    ) -> RotationResult:
        """Consume ``old_hash`` once (atomic, durable) and store ``new_hash`` in its family.

        The new token expires after ``token_ttl`` but never after its family; the family records the use.
        """
        ...

    async def revoke_family(self, family_id: str, reason: str) -> None: ...

    async def revoke_user_families(self, user_id: int, keep_family_id: str, reason: str) -> int:
        """Revoke every live session of the user except ``keep_family_id``; returns how many."""
        ...

    async def revoke_access_token(self, jti: str, expires_at: int) -> None: ...

    async def is_revoked(self, jti: str, family_id: str) -> bool:
        """True if the access token or its family is revoked; PostgreSQL is the truth."""
        ...

    async def purge_expired(self, grace: timedelta) -> int:
        """Delete revocations and families that expired more than ``grace`` ago; returns rows deleted."""
        ...


class _Named(Protocol):
    @property
    def username(self) -> str: ...


class UserDirectory(Protocol):
    """The one thing tokens need from users: that the subject still exists, and its username."""

    async def get(self, user_id: int) -> _Named | None: ...


@dataclass(frozen=True)
class TokenPolicy:
    """From ``auth``: access_token_expiration, refresh_token_expiration, refresh_token_absolute_lifetime."""

    access_ttl: timedelta = timedelta(minutes=15)
    refresh_ttl: timedelta = timedelta(days=7)
    family_lifetime: timedelta = timedelta(days=30)

    @classmethod
    def from_conf(cls, auth: Auth) -> TokenPolicy:
        return cls(
            access_ttl=auth.access_token_expiration,
            refresh_ttl=auth.refresh_token_expiration,
            family_lifetime=auth.refresh_token_absolute_lifetime,
        )


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class Introspection:
    active: bool
    revoked: bool = False
    token_type: str = ""
    subject: str = ""
    username: str = ""
    jti: str = ""
    issued_at: int = 0
    expires_at: int = 0
    issuer: str = ""
    kid: str = ""
    scope: str = ""


def hash_refresh_token(token: str) -> str:
    """Refresh tokens carry 256 bits of entropy, so a plain SHA-256 is enough (no enumeration)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _invalid(message: str = "token is invalid") -> Unauthenticated:
    return Unauthenticated("TOKEN_INVALID", message)


PURGE_GRACE = timedelta(hours=1)


class TokenUsecase:
    """Issues, rotates, verifies, revokes and introspects tokens."""

    def __init__(
        self,
        signer: TokenSigner,
        sessions: SessionRepo,
        users: UserDirectory,
        audit: AuditLog,
        policy: TokenPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._sessions = sessions
        self._users = users
        self._audit = audit
        self._policy = policy
        self._clock = clock

    @property
    def access_ttl_seconds(self) -> int:
        return int(self._policy.access_ttl.total_seconds())

    async def purge_expired(self) -> int:
        """Forget sessions and revocations nothing can present any more.

        A revoked access token is kept until well after its ``exp`` (verification allows clock leeway), and an
        expired family until no token of it can be refreshed: PURGE_GRACE is far beyond both."""
        return await self._sessions.purge_expired(PURGE_GRACE)

    async def issue(self, user_id: int, username: str, client_addr: str = "", user_agent: str = "") -> TokenPair:
        """A new session (refresh-token family) and its first token pair."""
        family_id = str(uuid.uuid4())
        refresh = secrets.token_urlsafe(_REFRESH_TOKEN_BYTES)
        await self._sessions.start_family(
            family_id,
            user_id,
            self._policy.family_lifetime,
            hash_refresh_token(refresh),
            self._policy.refresh_ttl,
            client_addr,
            user_agent,
        )
        return TokenPair(self._access_token(user_id, username, family_id), refresh, self.access_ttl_seconds)

    async def refresh(self, refresh_token: str, client_addr: str = "") -> TokenPair:
        """Rotate: the presented token is consumed; presenting it again revokes its whole family."""
        token = refresh_token.strip()
        if not _REFRESH_TOKEN_SHAPE.fullmatch(token):
            raise _invalid("refresh token is invalid")
        new_refresh = secrets.token_urlsafe(_REFRESH_TOKEN_BYTES)
        result = await self._sessions.rotate_refresh_token(
            hash_refresh_token(token), hash_refresh_token(new_refresh), self._policy.refresh_ttl, client_addr
        )
        if result.outcome is Rotation.REUSED:
            await self._sessions.revoke_family(result.family_id, "reuse")
            await self._audit.record(
                "auth.refresh_token_reuse",
                "denied",
                subject=str(result.user_id),
                details={"client": client_addr, "session": result.family_id},
            )
            raise Unauthenticated("REFRESH_TOKEN_REUSED", "refresh token was already used; the session is revoked")
        if result.outcome is Rotation.UNKNOWN:
            raise _invalid("refresh token is invalid")
        if result.outcome is Rotation.EXPIRED:
            raise Unauthenticated("TOKEN_EXPIRED", "refresh token has expired")
        if result.outcome is Rotation.REVOKED:
            raise Unauthenticated("TOKEN_REVOKED", "session has been revoked")
        user = await self._users.get(result.user_id)
        if user is None:
            await self._sessions.revoke_family(result.family_id, "user_gone")
            raise Unauthenticated("TOKEN_REVOKED", "session has been revoked")
        access = self._access_token(result.user_id, user.username, result.family_id)
        return TokenPair(access, new_refresh, self.access_ttl_seconds)

    async def authenticate(self, access_token: str) -> Caller:
        """The caller behind a valid, unexpired, unrevoked access token."""
        verified = self._verify(access_token)
        caller = self._caller(verified.claims)
        if await self._sessions.is_revoked(caller.token_id, caller.session_id):
            raise Unauthenticated("TOKEN_REVOKED", "token has been revoked")
        return caller

    async def logout(self, caller: Caller, client_addr: str = "") -> None:
        """End the caller's session: deny-list this access token and revoke its refresh family."""
        await self._sessions.revoke_access_token(caller.token_id, caller.expires_at)
        if caller.session_id:
            await self._sessions.revoke_family(caller.session_id, "logout")
        await self._audit.record(
            "auth.logout",
            "success",
            actor=str(caller.user_id),
            subject=str(caller.user_id),
            details={"client": client_addr, "session": caller.session_id},
        )

    async def end_other_sessions(self, caller: Caller, reason: str) -> int:
        """Revoke all of the caller's sessions but the current one (after a factor changed, ASVS 7.4.3)."""
        if caller.user_id is None:
            return 0
        return await self._sessions.revoke_user_families(caller.user_id, caller.session_id, reason)

    async def introspect(self, caller: Caller, token: str) -> Introspection:
        """RFC 7662 for service callers holding ``auth.introspect``; anything not active is ``active=False`` only.

        Only access tokens are introspected. A refresh token is for the client that received it and
        for RefreshToken alone (RFC 6749 §1.5); no resource server has a reason to check one, and an
        answer about it would let whoever stole one learn that it still works without presenting it,
        which is what reuse detection watches. So every refresh token (and anything else that is not a
        valid, unrevoked access token) answers ``active=False``, without a lookup.
        """
        if INTROSPECT_SCOPE not in caller.scopes:
            raise PermissionDenied(
                "PERMISSION_DENIED", f"introspection needs a service credential with {INTROSPECT_SCOPE}"
            )
        text = token.strip()
        if not text or len(text) > MAX_TOKEN_CHARS or text.count(".") != 2:
            return Introspection(active=False)
        try:
            verified = self._signer.verify(text)
            subject = self._caller(verified.claims)
        except Unauthenticated:
            return Introspection(active=False)
        if await self._sessions.is_revoked(subject.token_id, subject.session_id):
            return Introspection(active=False)
        claims = verified.claims
        return Introspection(
            active=True,
            token_type=ACCESS,
            subject=str(claims["sub"]),
            username=str(claims.get("username", "")),
            jti=subject.token_id,
            issued_at=int(claims["iat"]),
            expires_at=subject.expires_at,
            issuer=str(claims.get("iss", "")),
            kid=verified.kid,
            scope=" ".join(sorted(subject.scopes)),
        )

    def jwks(self) -> list[dict[str, str]]:
        return self._signer.jwks()

    def _access_token(self, user_id: int, username: str, family_id: str) -> str:
        now = int(self._clock())
        return self._signer.sign(
            {
                "sub": str(user_id),
                "username": username,
                "sid": family_id,
                "jti": secrets.token_urlsafe(16),
                "iat": now,
                "nbf": now,
                "exp": now + self.access_ttl_seconds,
            }
        )

    def _verify(self, token: str) -> VerifiedToken:
        text = token.strip()
        if not text or len(text) > MAX_TOKEN_CHARS:
            raise _invalid()
        return self._signer.verify(text)

    @staticmethod
    def _caller(claims: Mapping[str, Any]) -> Caller:
        sub, jti, sid, exp = claims.get("sub"), claims.get("jti"), claims.get("sid"), claims.get("exp")
        if not (isinstance(sub, str) and _DECIMAL.fullmatch(sub) and isinstance(jti, str) and jti):
            raise _invalid()
        if not isinstance(sid, str) or not isinstance(exp, int):
            raise _invalid()
        scope = claims.get("scope", "")
        return Caller(
            user_id=int(sub),
            username=str(claims.get("username", "")),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            token_id=jti,
            session_id=sid,
            expires_at=exp,
        )
