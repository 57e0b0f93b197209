"""Password policy and Argon2id hashing (SECURITY.md item 7).

Hashes are PHC strings (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``) so the parameters travel with each
hash and a login can tell when a stored hash was made with older parameters and must be redone.
Argon2 is CPU- and memory-heavy (tens of milliseconds), so it always runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from internal.biz.errors import InvalidArgument, PermissionDenied

if TYPE_CHECKING:
    from internal.conf.config import Auth

MIN_PASSWORD_LENGTH = 8
_SALT_BYTES = 16
_HASH_BYTES = 32
_PHC_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


def check_password_policy(password: str, max_length: int) -> None:
    """At least 8 characters with letters and digits, at most ``max_length`` (passphrases welcome).

    Raises InvalidArgument(PASSWORD_WEAK) with ``field=password`` in the metadata.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise _weak(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > max_length:
        raise _weak(f"password must have at most {max_length} characters")
    if not any(c.isalpha() for c in password) or not any(c.isdigit() for c in password):
        raise _weak("password must contain letters and digits")


def _weak(message: str) -> InvalidArgument:
    return InvalidArgument("PASSWORD_WEAK", message, {"field": "password"})


class PasswordHasher(Protocol):
    """Hashes and verifies passwords; implementations keep the event loop free."""

    async def hash(self, password: str) -> str: ...

    async def verify(self, password: str, encoded: str) -> bool: ...

    def needs_rehash(self, encoded: str) -> bool: ...

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of one verification without a user, so unknown users cost the same."""
        ...


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int = 19456
    iterations: int = 2
    lanes: int = 1

    @classmethod
    def from_conf(cls, auth: Auth) -> Argon2Params:
        a = auth.argon2
        return cls(memory_kib=a.memory_kib, iterations=a.iterations, lanes=a.lanes)


class Argon2PasswordHasher:
    """Argon2id with the configured parameters (``auth.argon2``), computed in a worker thread."""

    def __init__(self, params: Argon2Params) -> None:
        self._params = params
        # Computed once up front so even the first unknown-user login costs exactly one verification.
        self._dummy = self._hash_sync(secrets.token_hex(16))

    def _kdf(self) -> Argon2id:
        return Argon2id(
            salt=os.urandom(_SALT_BYTES),
            length=_HASH_BYTES,
            iterations=self._params.iterations,
            lanes=self._params.lanes,
            memory_cost=self._params.memory_kib,
        )

    def _hash_sync(self, password: str) -> str:
        return self._kdf().derive_phc_encoded(password.encode())

    @staticmethod
    def _verify_sync(password: str, encoded: str) -> bool:
        try:
            Argon2id.verify_phc_encoded(password.encode(), encoded)
        except (InvalidKey, ValueError):
            # ValueError: not an Argon2id PHC string (e.g. a legacy hash): never matches.
            return False
        return True

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hash_sync, password)

    async def verify(self, password: str, encoded: str) -> bool:
        return await asyncio.to_thread(self._verify_sync, password, encoded)

    def needs_rehash(self, encoded: str) -> bool:
        match = _PHC_PARAMS.match(encoded)
        if match is None:
            return True
        memory, iterations, lanes = (int(g) for g in match.groups())
        p = self._params
        return (memory, iterations, lanes) != (p.memory_kib, p.iterations, p.lanes)

    async def dummy_verify(self, password: str) -> None:
        await self.verify(password, self._dummy)


# ---------------------------------------------------------------------------------------------------
# Brute-force protection (SECURITY.md item 9)


@dataclass(frozen=True)
class AttemptDecision:
    allowed: bool
    attempts: int
    unlock_at: float = 0.0


@dataclass(frozen=True)
class LockState:
    locked: bool
    unlock_at: float
    failed_attempts: int


class LoginGuard(Protocol):
    """Per-account failure counter and lock shared by every replica (``data.session.RedisLoginGuard``).

    ``begin_attempt`` counts the attempt atomically BEFORE the password is checked: while locked it
    refuses; otherwise it increments, and past ``max_attempts`` it sets the lock and refuses. So N
    parallel guesses run at most ``max_attempts`` password checks.
    """

    async def begin_attempt(self, account: str, max_attempts: int, lock_seconds: float) -> AttemptDecision: ...

    async def record_failure(self, account: str, max_attempts: int, lock_seconds: float) -> float:
        """After a failed check: lock once the count reached ``max_attempts``; returns unlock time or 0."""
        ...

    async def give_back(self, account: str) -> None:
        """Uncount an attempt that proved the password (e.g. answered TOTP_REQUIRED)."""
        ...

    async def reset(self, account: str) -> None: ...

    async def status(self, account: str) -> LockState: ...


@dataclass(frozen=True)
class LockoutPolicy:
    """From ``auth``: max_login_attempts and lock_duration."""

    max_attempts: int = 5
    lock_seconds: float = 1800.0

    @classmethod
    def from_conf(cls, auth: Auth) -> LockoutPolicy:
        return cls(max_attempts=auth.max_login_attempts, lock_seconds=auth.lock_duration.total_seconds())


def account_locked(unlock_at: float) -> PermissionDenied:
    # The proto's ErrorReason declares ACCOUNT_LOCKED as PERMISSION_DENIED (API.md allowed either).
    return PermissionDenied(
        "ACCOUNT_LOCKED", "too many failed attempts; the account is locked", {"unlock_time": str(math.ceil(unlock_at))}
    )


class Lockout:
    """The counter protocol around one credential check, shared by login and TOTP disable."""

    def __init__(self, guard: LoginGuard, policy: LockoutPolicy) -> None:
        self._guard = guard
        self._policy = policy

    @property
    def policy(self) -> LockoutPolicy:
        return self._policy

    async def begin(self, account: str) -> None:
        """Count the attempt; raises ACCOUNT_LOCKED instead of letting a check run."""
        decision = await self._guard.begin_attempt(account, self._policy.max_attempts, self._policy.lock_seconds)
        if not decision.allowed:
            raise account_locked(decision.unlock_at)

    async def failed(self, account: str) -> float:
        """The check failed; returns the unlock time when this failure locked the account, else 0."""
        return await self._guard.record_failure(account, self._policy.max_attempts, self._policy.lock_seconds)

    async def give_back(self, account: str) -> None:
        await self._guard.give_back(account)

    async def succeeded(self, account: str) -> None:
        await self._guard.reset(account)

    async def status(self, account: str) -> LockState:
        return await self._guard.status(account)


def user_account(user_id: int) -> str:
    """Counter key of an existing account, whatever identifier (username, email, phone) was used."""
    return f"user:{user_id}"
