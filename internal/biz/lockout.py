"""Brute-force protection that an attacker cannot turn against the account's owner (ASVS 6.1.1, 6.3.1, 6.3.8).

A flat "5 failures lock the account" rule lets anyone lock anyone out. Instead (as Keycloak and Authelia
advise), failures are counted twice:

* per **source**: the identifier as it was typed (its canonical form) together with the client's
  network (IPv4 /24, IPv6 /64). Past ``auth.max_login_attempts`` failures, each further attempt from that
  source must wait a delay that doubles per failure (``auth.login_delay`` up to ``auth.login_delay_max``)
  and, as every login, solve a captcha. An attacker's network slows down; the owner's does not.
* per **account** (every identifier, every network). Only at ``auth.hard_lock_attempts`` failures,
  a much higher number, is the account locked for ``auth.lock_duration`` (or by an operator with
  ``users lock``).

What an unauthenticated caller can observe must not link identifiers of one account (ASVS 6.3.8): the
delay is keyed on the identifier they typed, never on the account, and the account's hard lock is
reported (``ACCOUNT_LOCKED``) only to a caller who has just proved the password. Everyone else gets
``INVALID_CREDENTIALS`` or ``RATE_LIMITED`` exactly as for an unknown identifier.

Every attempt is counted atomically **before** the credential is checked, so parallel guesses cannot
slip past a delay.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from internal.biz.errors import PermissionDenied, ResourceExhausted

if TYPE_CHECKING:
    from internal.conf.config import Auth


@dataclass(frozen=True)
class LockoutPolicy:
    """From ``auth``: max_login_attempts, login_delay(_max), hard_lock_attempts, lock_duration."""

    free_attempts: int = 5
    delay_seconds: float = 1.0
    max_delay_seconds: float = 900.0
    hard_lock_attempts: int = 100
    lock_seconds: float = 1800.0

    @classmethod
    def from_conf(cls, auth: Auth) -> LockoutPolicy:
        return cls(
            free_attempts=auth.max_login_attempts,
            delay_seconds=auth.login_delay.total_seconds(),
            max_delay_seconds=auth.login_delay_max.total_seconds(),
            hard_lock_attempts=auth.hard_lock_attempts,
            lock_seconds=auth.lock_duration.total_seconds(),
        )


@dataclass(frozen=True)
class AttemptKey:
    """Where one attempt is counted: its account (``user:42`` or an unknown identifier) and its source."""

    account: str
    source: str


@dataclass(frozen=True)
class AttemptDecision:
    allowed: bool
    retry_after: float = 0.0  # seconds, when not allowed
    locked_until: float = 0.0  # unix seconds; the account's hard lock (reported only after a right password)


@dataclass(frozen=True)
class LockState:
    locked: bool
    unlock_at: float
    failed_attempts: int


class LoginGuard(Protocol):
    """Shared failure counters (``internal.data.login_guard.RedisLoginGuard``), atomic across replicas."""

    async def begin_attempt(self, key: AttemptKey, policy: LockoutPolicy) -> AttemptDecision:
        """Refuse while the source's delay runs; otherwise count the attempt on the source and the account."""
        ...

    async def record_failure(self, account: str, policy: LockoutPolicy) -> float:
        """After a failed check: hard-lock once the account count reached the limit; returns the unlock time or 0."""
        ...

    async def give_back(self, key: AttemptKey) -> None:
        """Uncount an attempt that proved the password (e.g. answered TOTP_REQUIRED)."""
        ...

    async def succeeded(self, key: AttemptKey) -> None:
        """Forget the source's and the account's failures."""
        ...

    async def lock(self, account: str, seconds: float) -> float:
        """Operator action; returns the unlock time."""
        ...

    async def unlock(self, account: str) -> None: ...

    async def status(self, account: str) -> LockState: ...


def account_locked(unlock_at: float) -> PermissionDenied:
    # The proto's ErrorReason declares ACCOUNT_LOCKED as PERMISSION_DENIED (docs/api.md allowed either).
    return PermissionDenied(
        "ACCOUNT_LOCKED", "too many failed attempts; the account is locked", {"unlock_time": str(math.ceil(unlock_at))}
    )


def throttled(retry_after: float) -> ResourceExhausted:
    """The one answer for every throttle (per network, per source), so none says more than another."""
    return ResourceExhausted(
        "RATE_LIMITED", "too many requests; retry later", {"retry_after": str(max(1, math.ceil(retry_after)))}
    )


def client_network(client_addr: str) -> str:
    """The network a client address is counted under: IPv4 /24, IPv6 /64 (an IPv4-mapped address as IPv4).

    One host owns a whole IPv6 /64 and often a whole IPv4 /24, so limits per exact address are
    trivially dodged. Anything that is not an IP address (a Unix socket peer) is its own network.
    """
    try:
        address = ipaddress.ip_address(client_addr.strip().strip("[]"))
    except ValueError:
        return client_addr or "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def source_key(identifier_key: str, client_addr: str, purpose: str = "login") -> str:
    """The source counter name: purpose, a digest of the canonical identifier, the client network."""
    digest = hashlib.sha256(identifier_key.encode()).hexdigest()[:32]
    return f"{purpose}:{digest}:{client_network(client_addr)}"


def user_account(user_id: int) -> str:
    """Counter key of an existing account, whatever identifier (username, email, phone) was used."""
    return f"user:{user_id}"


class Lockout:
    """The counter protocol around one credential check, shared by login and the re-authentication RPCs."""

    def __init__(self, guard: LoginGuard, policy: LockoutPolicy) -> None:
        self._guard = guard
        self._policy = policy

    @property
    def policy(self) -> LockoutPolicy:
        return self._policy

    async def begin(self, key: AttemptKey) -> AttemptDecision:
        """Count the attempt; raises RATE_LIMITED while the source must wait."""
        decision = await self._guard.begin_attempt(key, self._policy)
        if not decision.allowed:
            raise throttled(decision.retry_after)
        return decision

    async def failed(self, key: AttemptKey) -> float:
        """The check failed; returns the unlock time when this failure hard-locked the account, else 0."""
        return await self._guard.record_failure(key.account, self._policy)

    async def give_back(self, key: AttemptKey) -> None:
        await self._guard.give_back(key)

    async def succeeded(self, key: AttemptKey) -> None:
        await self._guard.succeeded(key)

    async def lock(self, account: str, seconds: float | None = None) -> float:
        return await self._guard.lock(account, self._policy.lock_seconds if seconds is None else seconds)

    async def unlock(self, account: str) -> None:
        await self._guard.unlock(account)

    async def status(self, account: str) -> LockState:
        return await self._guard.status(account)
