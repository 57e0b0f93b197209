"""Service credentials: bearer tokens with scopes and key-name patterns for machine callers (KMS clients, auth
admins).

A credential may use a KMS key only if one of its key patterns (exact names or ``prefix.*``; ``default`` only
unless granted more) matches the key's name, and never a reserved ``authkms.`` key.

A token is shown once at creation; only its SHA-256 is stored (the token carries 256 random bits, so a
fast hash is safe here, unlike passwords). Lookups are cached in memory for a short, documented time so
an Encrypt call costs no database round trip; a revocation takes effect in every replica within
``cache_ttl`` seconds.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Protocol

from internal.biz.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from internal.biz.kms import DEFAULT_KEY, key_denied, key_matcher, validate_key_pattern
from internal.biz.ports import AuditLog

SCOPES = frozenset({"kms.encrypt", "kms.decrypt", "kms.datakey", "kms.admin", "auth.admin", "auth.introspect"})
TOKEN_PREFIX = "akms_"
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")


@dataclass(frozen=True)
class ServiceCredential:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    key_patterns: tuple[str, ...] = (DEFAULT_KEY,)

    @cached_property
    def may_use_key(self) -> Callable[[str], bool]:
        """``may_use_key(name)``: whether this credential may use key ``name`` (its patterns split once)."""
        return key_matcher(self.key_patterns)


@dataclass(frozen=True)
class IssuedCredential:
    credential: ServiceCredential
    token: str


class CredentialRepo(Protocol):
    async def create(
        self, name: str, token_hash: str, scopes: Sequence[str], key_patterns: Sequence[str]
    ) -> ServiceCredential: ...

    async def find_active_by_hash(self, token_hash: str) -> ServiceCredential | None: ...

    async def revoke(self, name: str) -> bool: ...

    async def list(self) -> list[ServiceCredential]: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CredentialUsecase:
    def __init__(self, repo: CredentialRepo, audit: AuditLog, cache_ttl: float = 5.0) -> None:
        self._repo = repo
        self._audit = audit
        self._cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, ServiceCredential | None]] = {}

    async def create(
        self, name: str, scopes: Sequence[str], key_patterns: Sequence[str] = (DEFAULT_KEY,)
    ) -> IssuedCredential:
        """Create a credential for ``key_patterns``; the returned token is never retrievable again."""
        if not _NAME.match(name):
            raise InvalidArgument("VALIDATION_ERROR", "name must be 2-64 chars: lower-case letters, digits, _ . -")
        unknown = sorted(set(scopes) - SCOPES)
        if not scopes or unknown:
            raise InvalidArgument("VALIDATION_ERROR", f"scopes must be a non-empty subset of {sorted(SCOPES)}")
        if not key_patterns or len(key_patterns) > 64:
            raise InvalidArgument("VALIDATION_ERROR", "a credential needs 1 to 64 key patterns")
        patterns = sorted({validate_key_pattern(p) for p in key_patterns})
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        credential = await self._repo.create(name, token_hash(token), sorted(set(scopes)), patterns)
        details = {"scopes": ",".join(sorted(scopes)), "keys": ",".join(patterns)}  # bounded by the audit writer
        await self._audit.record("credential.create", "success", subject=name, details=details)
        return IssuedCredential(credential, token)

    async def revoke(self, name: str) -> None:
        if not await self._repo.revoke(name):
            raise NotFound("CREDENTIAL_NOT_FOUND", "no active credential with that name")
        self._cache.clear()
        await self._audit.record("credential.revoke", "success", subject=name)

    async def list(self) -> list[ServiceCredential]:
        return await self._repo.list()

    async def lookup(self, token: str) -> ServiceCredential | None:
        """The active credential for a token, or None. Cached briefly, misses included."""
        digest = token_hash(token)
        entry = self._fresh_entry(digest)
        return entry[1] if entry else await self._load(token, digest)

    async def _load(self, token: str, digest: str) -> ServiceCredential | None:
        """Ask the repository (a cache miss) and cache the answer, misses included."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        credential = await self._repo.find_active_by_hash(digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._cache_ttl, credential)
        # Lookup is by SHA-256 of the token, so no secret-dependent comparison happens in Python.
        return credential

    def _fresh_entry(self, digest: str) -> tuple[float, ServiceCredential | None] | None:
        """The unexpired cache entry (expiry, credential or None) for a token's digest. Never waits: the hot path."""
        cached = self._cache.get(digest)
        return cached if cached and cached[0] > time.monotonic() else None

    def granted(self, token: str, key_name: str, *any_of: str) -> ServiceCredential | None:
        """The cached credential of ``token`` if it holds one of ``any_of`` and may use key ``key_name``, else
        None. Never waits and records nothing: ``authorize_key`` asks it first, the hot path of every KMS call."""
        entry = self._fresh_entry(token_hash(token))
        credential = entry[1] if entry else None
        if credential is None or credential.scopes.isdisjoint(any_of) or not credential.may_use_key(key_name):
            return None
        return credential

    async def authorize_key(self, token: str | None, key_name: str, *any_of: str, action: str) -> ServiceCredential:
        """``authorize``, and the credential may use key ``key_name``: the same PERMISSION_DENIED whether or not
        that key exists, and always for a reserved key. A cached grant answers at once; anything else (a miss,
        a refusal) takes the full check, which loads, answers and audits it."""
        granted = self.granted(token, key_name, *any_of) if token else None
        if granted is not None:
            return granted
        credential = await self.authorize(token, *any_of, action=action)
        if not credential.may_use_key(key_name):
            await self._audit.record("access.denied", "key_not_allowed", actor=credential.name, subject=action)
            raise key_denied(key_name)
        return credential

    async def authorize(self, token: str | None, *any_of: str, action: str) -> ServiceCredential:
        """The caller's credential if it holds one of ``any_of``; otherwise UNAUTHENTICATED/PERMISSION_DENIED."""
        if not token:
            await self._audit.record("access.denied", "no_credential", subject=action)
            raise Unauthenticated("CREDENTIALS_MISSING", "a service credential is required (authorization: Bearer …)")
        digest = token_hash(token)
        entry = self._fresh_entry(digest)
        credential = entry[1] if entry else await self._load(token, digest)
        if credential is None:
            await self._audit.record("access.denied", "bad_credential", subject=action)
            raise Unauthenticated("CREDENTIALS_INVALID", "the service credential is invalid or revoked")
        if credential.scopes.isdisjoint(any_of):
            await self._audit.record("access.denied", "no_scope", actor=credential.name, subject=action)
            raise PermissionDenied("PERMISSION_DENIED", f"this credential lacks the scope {' or '.join(any_of)}")
        return credential
