"""Registration, login and lock status (docs/security.md items 7-9, 11, 17, 21, 23, 24).

Login is built so that an observer learns nothing about which accounts exist: an unknown identifier,
a malformed one and a wrong password all answer ``INVALID_CREDENTIALS`` after one password verification
(against a dummy hash when there is no user), and failures of unknown identifiers are counted and
throttled exactly like real accounts (see ``internal.biz.lockout`` for the counting rules).

Registration proves ownership: with captchas on (always, in production), the captcha must be a code
sent to the email being registered, and a second one sent to the phone when one is given. An image
captcha proves nothing about an address, so it cannot register one: otherwise anyone could register a
victim's address first and keep its owner out (account pre-hijacking).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from internal.biz import pii
from internal.biz.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from internal.biz.identifiers import (
    USERNAME,
    classify,
    normalize_email,
    normalize_phone,
    normalize_username,
    username_key,
)
from internal.biz.lockout import (
    AttemptKey,
    Lockout,
    account_locked,
    client_network,
    source_key,
    throttled,
    user_account,
)
from internal.biz.password import PasswordHasher, check_password_policy, normalize_password
from internal.biz.ports import AuditLog, Caller, RateLimiter
from internal.biz.token import TokenPair, TokenUsecase
from internal.biz.totp import TotpVerifier, check_code_shape
from internal.biz.user import NewUser, User, UserRepo, email_key_hash, validate_name

if TYPE_CHECKING:
    from internal.conf.config import Auth

MAX_IDENTIFIER_CHARS = 254
# Blind-index field of a username's confusable key; deleted accounts keep it during their grace period.
USERNAME_KEY_INDEX = "username_key"


class CaptchaChecker(Protocol):
    """The part of ``internal.biz.captcha.CaptchaUsecase`` that registration and login use."""

    @property
    def enabled(self) -> bool: ...

    async def consume(
        self, captcha_id: str, code: str, allowed_targets: Collection[str] = (), *, require_target: bool = False
    ) -> None:
        """Single use; raises InvalidArgument CAPTCHA_REQUIRED / CAPTCHA_EXPIRED / CAPTCHA_INVALID.

        ``require_target``: only a code sent to one of ``allowed_targets`` passes (no image captcha).
        """
        ...


@dataclass(frozen=True)
class AuthPolicy:
    """From ``auth``: password_max_length, login_rate_limit, login_rate_window.

    The limit counts per client network (IPv4 /24, IPv6 /64), for logins and, separately, registrations.
    """

    password_max_length: int = 128
    client_rate_limit: int = 30
    client_rate_window_seconds: float = 60.0

    @classmethod
    def from_conf(cls, auth: Auth) -> AuthPolicy:
        return cls(
            password_max_length=auth.password_max_length,
            client_rate_limit=auth.login_rate_limit,
            client_rate_window_seconds=auth.login_rate_window.total_seconds(),
        )


@dataclass(frozen=True)
class Registration:
    username: str
    password: str
    email: str
    phone: str = ""
    name: str = ""
    captcha_id: str = ""
    captcha_code: str = ""
    phone_captcha_id: str = ""
    phone_captcha_code: str = ""


@dataclass(frozen=True)
class LoginAttempt:
    identifier: str
    password: str
    captcha_id: str = ""
    captcha_code: str = ""
    totp_code: str = ""
    user_agent: str = ""  # shown in ListSessions


@dataclass(frozen=True)
class LockStatus:
    locked: bool
    unlock_time: int
    failed_attempts: int
    max_attempts: int


@dataclass(frozen=True)
class _Identity:
    """A login identifier resolved to a user (or not), its account counter and its canonical key."""

    user: User | None
    account: str
    key: str


class AuthUsecase:
    """Register, log in, report lock status."""

    def __init__(
        self,
        users: UserRepo,
        cipher: pii.FieldCipher,
        hasher: PasswordHasher,
        captcha: CaptchaChecker,
        rate_limiter: RateLimiter,
        lockout: Lockout,
        tokens: TokenUsecase,
        audit: AuditLog,
        policy: AuthPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._cipher = cipher
        self._hasher = hasher
        self._captcha = captcha
        self._limiter = rate_limiter
        self._lockout = lockout
        self._tokens = tokens
        self._audit = audit
        self._policy = policy
        self._totp = TotpVerifier(users, cipher, clock)

    async def register(self, reg: Registration, client_addr: str = "") -> int:
        """Create an account; returns its id.

        A taken username, email or phone answers ``USER_EXISTS`` without naming the field: the
        unique indexes decide (also under concurrent registrations), and they hold the confusable keys
        too, so ``аlice`` (Cyrillic а) cannot sit beside ``alice``. Naming the field would turn
        registration into a precise "is this email registered?" oracle; registration is captcha-
        and rate-limited, which is what actually slows enumeration down.
        """
        username = normalize_username(reg.username)
        email = normalize_email(reg.email)
        phone = normalize_phone(reg.phone) if reg.phone.strip() else ""
        name = validate_name(reg.name) if reg.name.strip() else ""
        check_password_policy(reg.password, self._policy.password_max_length, username=username, email=email)
        await self._throttle(f"register:{client_network(client_addr)}")
        if self._captcha.enabled:
            if phone and not (reg.phone_captcha_id and reg.phone_captcha_code.strip()):
                # Refused before the email code is spent on a registration that cannot succeed.
                raise InvalidArgument("CAPTCHA_REQUIRED", "a code sent to the phone is required")
            await self._captcha.consume(reg.captcha_id, reg.captcha_code, [email], require_target=True)
            if phone:
                await self._captcha.consume(
                    reg.phone_captcha_id, reg.phone_captcha_code, [phone], require_target=True
                )

        password_hash = await self._hasher.hash(reg.password)
        user_id = await self._users.next_id()
        context = pii.user_context(user_id)
        email_field = await pii.seal_indexed(self._cipher, pii.EMAIL, email, context)
        phone_field = await pii.seal_indexed(self._cipher, pii.PHONE, phone, context) if phone else None
        name_field = await pii.seal_indexed(self._cipher, pii.NAME, name, context) if name else None
        new_user = NewUser(
            id=user_id,
            username=username,
            username_key=username_key(username),
            password_hash=password_hash,
            email_encrypted=email_field.ciphertext,
            email_hash=email_field.blind_index,
            email_key_hash=email_key_hash(self._cipher, email),
            phone_encrypted=phone_field.ciphertext if phone_field else None,
            phone_hash=phone_field.blind_index if phone_field else None,
            name_encrypted=name_field.ciphertext if name_field else None,
            name_hash=name_field.blind_index if name_field else None,
            pii_key_version=min(f.key_version for f in (email_field, phone_field, name_field) if f),
            earlier_hashes=self._earlier_hashes((pii.EMAIL, email), (pii.PHONE, phone)),
            username_hash=self._cipher.blind_index(USERNAME_KEY_INDEX, username_key(username)),
        )
        try:
            await self._users.create(new_user)
        except Exception:
            await self._audit.record("auth.register", "failure", details={"client": client_addr})
            raise
        await self._audit.record("auth.register", "success", subject=str(user_id), details={"client": client_addr})
        return user_id

    async def login(self, attempt: LoginAttempt, client_addr: str = "") -> TokenPair:
        """Exchange credentials for a token pair; see the module docstring for the enumeration rules."""
        identifier = attempt.identifier.strip()
        if not identifier or len(identifier) > MAX_IDENTIFIER_CHARS:
            raise InvalidArgument("VALIDATION_ERROR", "username, email or phone is required", {"field": "username"})
        await self._throttle(f"login:{client_network(client_addr)}")
        # A malformed identifier is treated as an unknown user: same error, same cost.
        field, normalized = classify(identifier)
        if self._captcha.enabled:
            # sms/email codes are bound to the address they were sent to.
            targets = [normalized] if normalized and field != USERNAME else []
            await self._captcha.consume(attempt.captcha_id, attempt.captcha_code, targets)
        identity = await self._resolve(identifier, field, normalized)
        user = identity.user
        key = AttemptKey(identity.account, source_key(identity.key, client_addr))

        try:
            decision = await self._lockout.begin(key)
        except ResourceExhausted:
            await self._audit_failure(user, "RATE_LIMITED", client_addr)
            raise
        if not await self._password_matches(user, attempt.password) or user is None:
            await self._login_failed(key, user, "INVALID_CREDENTIALS", client_addr)
            raise Unauthenticated("INVALID_CREDENTIALS", "invalid credentials")
        if decision.locked_until:
            # Only someone who just proved the password learns of the lock (it would link identifiers).
            await self._lockout.give_back(key)
            await self._audit_failure(user, "ACCOUNT_LOCKED", client_addr)
            raise account_locked(decision.locked_until)
        if user.totp_enabled:
            await self._second_factor(user, key, attempt.totp_code, client_addr)

        if self._hasher.needs_rehash(user.password_hash) or normalize_password(attempt.password) != attempt.password:
            # New parameters, a bcrypt import, or a hash made before passwords were normalised.
            await self._users.update_password(user.id, await self._hasher.hash(attempt.password))
        # Independent writes (Redis counter reset, PostgreSQL session), so in parallel: Login's latency
        # is the password check plus as few round trips as possible.
        pair, _ = await asyncio.gather(
            self._tokens.issue(user.id, user.username, client_addr, attempt.user_agent),
            self._lockout.succeeded(key),
        )
        await self._audit.record(
            "auth.login", "success", actor=str(user.id), subject=str(user.id), details={"client": client_addr}
        )
        return pair

    async def lock_status(self, caller: Caller, username: str) -> LockStatus:
        """Lock state of ``username``; a user may ask only about their own account."""
        user = await self._users.find_by_username(normalize_username(username))
        if user is None:
            if caller.is_admin:
                raise NotFound("USER_NOT_FOUND", "user not found")
            # Not the caller's own account either way; do not reveal whether it exists.
            raise PermissionDenied("PERMISSION_DENIED", "you may only query your own account")
        if not caller.may_act_for(user.id):
            raise PermissionDenied("PERMISSION_DENIED", "you may only query your own account")
        state = await self._lockout.status(user_account(user.id))
        return LockStatus(
            locked=state.locked,
            unlock_time=math.ceil(state.unlock_at) if state.locked else 0,
            failed_attempts=state.failed_attempts,
            max_attempts=self._lockout.policy.hard_lock_attempts,
        )

    async def unlock(self, username: str) -> None:
        """Operator action: clear an account's failure counter and lock."""
        user = await self._operator_target(username)
        await self._lockout.unlock(user_account(user.id))
        await self._audit.record("account.unlock", "success", actor="operator", subject=str(user.id))

    async def lock(self, username: str, seconds: float | None = None) -> float:
        """Operator action: hard-lock an account (``auth.lock_duration`` unless given); returns the unlock time."""
        user = await self._operator_target(username)
        unlock_at = await self._lockout.lock(user_account(user.id), seconds)
        await self._audit.record("account.lock", "success", actor="operator", subject=str(user.id))
        return unlock_at

    async def _operator_target(self, username: str) -> User:
        user = await self._users.find_by_username(normalize_username(username))
        if user is None:
            raise NotFound("USER_NOT_FOUND", "user not found")
        return user

    async def _throttle(self, bucket: str) -> None:
        verdict = await self._limiter.hit(
            bucket, self._policy.client_rate_limit, self._policy.client_rate_window_seconds
        )
        if not verdict.allowed:
            raise throttled(verdict.retry_after)

    def _earlier_hashes(self, *values: tuple[str, str]) -> tuple[str, ...]:
        """Blind indexes rows stored before the users' key may hold for these values (they block them too)."""
        return tuple(h for field, value in values if value for h in self._cipher.lookup_hashes(field, value)[1:])

    async def _resolve(self, identifier: str, field: str, normalized: str | None) -> _Identity:
        """The user behind an identifier, its account counter and its canonical key.

        The canonical key of an email or phone is its keyed blind index, so Redis never holds them in
        readable or reversible form; a username's is its confusable key.
        """
        user: User | None = None
        if normalized is None:
            key = "raw:" + identifier.casefold()
        elif field == USERNAME:
            key = "username:" + username_key(normalized)
            user = await self._users.find_by_username(normalized)
        else:
            hashes = self._cipher.lookup_hashes(field, normalized)
            key = f"{field}:{hashes[0]}"
            if field == pii.EMAIL:
                user = await self._users.find_by_email_hash(*hashes)
            else:
                user = await self._users.find_by_phone_hash(*hashes)
        if user is not None:
            return _Identity(user, user_account(user.id), key)
        return _Identity(None, "unknown:" + hashlib.sha256(key.encode()).hexdigest(), key)

    async def _password_matches(self, user: User | None, password: str) -> bool:
        if len(password) > self._policy.password_max_length or not password:
            # Cannot match any stored password (the policy refused it); still cost one verification.
            await self._hasher.dummy_verify(password[: self._policy.password_max_length])
            return False
        if user is None:
            await self._hasher.dummy_verify(password)
            return False
        return await self._hasher.verify(password, user.password_hash)

    async def _second_factor(self, user: User, key: AttemptKey, code: str, client_addr: str) -> None:
        if not code.strip():
            # The password was right: this attempt proved nothing wrong, so it does not count.
            await self._lockout.give_back(key)
            await self._audit_failure(user, "TOTP_REQUIRED", client_addr)
            raise Unauthenticated("TOTP_REQUIRED", "a TOTP code is required")
        try:
            ok = await self._totp.verify_and_consume(user, check_code_shape(code))
        except InvalidArgument:
            ok = False
        if not ok:
            await self._login_failed(key, user, "TOTP_INVALID", client_addr)
            raise Unauthenticated("TOTP_INVALID", "TOTP code is invalid")

    async def _login_failed(self, key: AttemptKey, user: User | None, reason: str, client_addr: str) -> None:
        unlock_at = await self._lockout.failed(key)
        await self._audit_failure(user, reason, client_addr)
        if unlock_at:
            subject = str(user.id) if user is not None else None
            await self._audit.record("auth.lockout", "success", subject=subject, details={"client": client_addr})

    async def _audit_failure(self, user: User | None, reason: str, client_addr: str) -> None:
        subject = str(user.id) if user is not None else None
        await self._audit.record(
            "auth.login", "failure", subject=subject, details={"client": client_addr, "reason": reason}
        )
