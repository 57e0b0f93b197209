"""Registration, login and lock status (SECURITY.md items 7-9, 11, 17).

Login is built so that an observer learns nothing about which accounts exist: an unknown identifier,
a malformed one and a wrong password all answer ``INVALID_CREDENTIALS`` after one Argon2 verification
(against a dummy hash when there is no user), and failures of unknown identifiers are counted and
locked exactly like real accounts.
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
from internal.biz.password import (
    Lockout,
    PasswordHasher,
    account_locked,
    check_password_policy,
    user_account,
)
from internal.biz.token import AuditLog, Caller, TokenPair, TokenUsecase
from internal.biz.totp import TotpVerifier, check_code_shape
from internal.biz.user import (
    USERNAME_PATTERN,
    NewUser,
    User,
    UserRepo,
    normalize_email,
    normalize_phone,
    validate_name,
    validate_username,
)

if TYPE_CHECKING:
    from internal.conf.config import Auth

MAX_IDENTIFIER_CHARS = 254


class RateVerdict(Protocol):
    @property
    def allowed(self) -> bool: ...

    @property
    def retry_after(self) -> float: ...


class RateLimiter(Protocol):
    """Shared sliding-window limiter (``internal.data.ratelimit.RedisRateLimiter``)."""

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateVerdict: ...


class CaptchaChecker(Protocol):
    """The part of ``internal.biz.captcha.CaptchaUsecase`` that registration and login use."""

    @property
    def enabled(self) -> bool: ...

    async def consume(self, captcha_id: str, code: str, allowed_targets: Collection[str] = ()) -> None:
        """Single use; raises InvalidArgument CAPTCHA_REQUIRED / CAPTCHA_EXPIRED / CAPTCHA_INVALID."""
        ...


@dataclass(frozen=True)
class AuthPolicy:
    """From ``auth``: password_max_length, login_rate_limit, login_rate_window.

    The per-client limit applies to logins and, separately, to registrations.
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


@dataclass(frozen=True)
class LoginAttempt:
    identifier: str
    password: str
    captcha_id: str = ""
    captcha_code: str = ""
    totp_code: str = ""


@dataclass(frozen=True)
class LockStatus:
    locked: bool
    unlock_time: int
    failed_attempts: int
    max_attempts: int


@dataclass(frozen=True)
class _Identity:
    """A login identifier resolved to a user (or not) and the key its failures are counted under."""

    user: User | None
    account: str


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
        unique indexes decide (also under concurrent registrations). Naming the field would turn
        registration into a precise "is this email registered?" oracle; registration is captcha-
        and rate-limited, which is what actually slows enumeration down.
        """
        username = validate_username(reg.username)
        email = normalize_email(reg.email)
        phone = normalize_phone(reg.phone) if reg.phone.strip() else ""
        name = validate_name(reg.name) if reg.name.strip() else ""
        check_password_policy(reg.password, self._policy.password_max_length)
        await self._throttle(f"register:{client_addr}")
        if self._captcha.enabled:
            await self._captcha.consume(reg.captcha_id, reg.captcha_code, [t for t in (email, phone) if t])

        password_hash = await self._hasher.hash(reg.password)
        user_id = await self._users.next_id()
        context = pii.user_context(user_id)
        email_sealed = await self._cipher.encrypt(pii.EMAIL, email.encode(), context)
        versions = [email_sealed.key_version]
        phone_sealed = name_sealed = None
        if phone:
            phone_sealed = await self._cipher.encrypt(pii.PHONE, phone.encode(), context)
            versions.append(phone_sealed.key_version)
        if name:
            name_sealed = await self._cipher.encrypt(pii.NAME, name.encode(), context)
            versions.append(name_sealed.key_version)
        new_user = NewUser(
            id=user_id,
            username=username,
            password_hash=password_hash,
            email_encrypted=email_sealed.ciphertext,
            email_hash=self._cipher.blind_index(pii.EMAIL, email),
            phone_encrypted=phone_sealed.ciphertext if phone_sealed else None,
            phone_hash=self._cipher.blind_index(pii.PHONE, phone) if phone else None,
            name_encrypted=name_sealed.ciphertext if name_sealed else None,
            name_hash=self._cipher.blind_index(pii.NAME, name) if name else None,
            pii_key_version=min(versions),
            earlier_hashes=self._earlier_hashes((pii.EMAIL, email), (pii.PHONE, phone)),
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
        await self._throttle(f"login:{client_addr}")
        field, normalized = self._classify(identifier)
        if self._captcha.enabled:
            # sms/email codes are bound to the address they were sent to.
            targets = [normalized] if normalized and field != "username" else []
            await self._captcha.consume(attempt.captcha_id, attempt.captcha_code, targets)
        identity = await self._resolve(identifier, field, normalized)
        account, user = identity.account, identity.user

        try:
            await self._lockout.begin(account)
        except PermissionDenied:
            await self._audit_failure(user, "ACCOUNT_LOCKED", client_addr)
            raise
        if not await self._password_matches(user, attempt.password) or user is None:
            await self._login_failed(account, user, "INVALID_CREDENTIALS", client_addr)
            raise Unauthenticated("INVALID_CREDENTIALS", "invalid credentials")
        if user.totp_enabled:
            await self._second_factor(user, account, attempt.totp_code, client_addr)

        if self._hasher.needs_rehash(user.password_hash):
            await self._users.update_password(user.id, await self._hasher.hash(attempt.password))
        # Independent writes (Redis counter reset, PostgreSQL session), so in parallel: Login's latency
        # is the password check plus as few round trips as possible.
        pair, _ = await asyncio.gather(self._tokens.issue(user.id, user.username), self._lockout.succeeded(account))
        await self._audit.record(
            "auth.login", "success", actor=str(user.id), subject=str(user.id), details={"client": client_addr}
        )
        return pair

    async def lock_status(self, caller: Caller, username: str) -> LockStatus:
        """Lock state of ``username``; a user may ask only about their own account."""
        validate_username(username)
        user = await self._users.find_by_username(username)
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
            max_attempts=self._lockout.policy.max_attempts,
        )

    async def unlock(self, username: str) -> None:
        """Operator action: clear an account's failure counter and lock."""
        user = await self._users.find_by_username(username)
        if user is None:
            raise NotFound("USER_NOT_FOUND", "user not found")
        await self._lockout.succeeded(user_account(user.id))
        await self._audit.record("account.unlock", "success", actor="operator", subject=str(user.id))

    async def _throttle(self, bucket: str) -> None:
        verdict = await self._limiter.hit(
            bucket, self._policy.client_rate_limit, self._policy.client_rate_window_seconds
        )
        if not verdict.allowed:
            raise ResourceExhausted(
                "RATE_LIMITED", "too many requests; retry later", {"retry_after": str(math.ceil(verdict.retry_after))}
            )

    def _classify(self, identifier: str) -> tuple[str, str | None]:
        """Detect the identifier by shape: "@" → email, leading "+" → phone, else username.

        Returns the field and the normalized value, or None when it is malformed (then it is treated
        as an unknown user: same error, same cost).
        """
        if "@" in identifier or identifier.startswith("+"):
            field, normalize = (pii.EMAIL, normalize_email) if "@" in identifier else (pii.PHONE, normalize_phone)
            try:
                return field, normalize(identifier)
            except InvalidArgument:
                return field, None
        return "username", identifier if USERNAME_PATTERN.fullmatch(identifier) else None

    def _earlier_hashes(self, *values: tuple[str, str]) -> tuple[str, ...]:
        """Blind indexes rows stored before the users' key may hold for these values (they block them too)."""
        return tuple(h for field, value in values if value for h in self._cipher.lookup_hashes(field, value)[1:])

    async def _resolve(self, identifier: str, field: str, normalized: str | None) -> _Identity:
        """The user behind an identifier and the key its failures are counted under.

        Failures of an unknown identifier are counted under a key derived from it; for emails and
        phones that is the keyed blind index, so Redis never holds them in readable or reversible form.
        """
        unknown_key = "unknown:" + hashlib.sha256(identifier.lower().encode()).hexdigest()
        user: User | None = None
        if normalized is not None and field == "username":
            user = await self._users.find_by_username(normalized)
        elif normalized is not None:
            hashes = self._cipher.lookup_hashes(field, normalized)
            unknown_key = f"unknown:{field}:{hashes[0]}"
            if field == pii.EMAIL:
                user = await self._users.find_by_email_hash(*hashes)
            else:
                user = await self._users.find_by_phone_hash(*hashes)
        return _Identity(user, user_account(user.id) if user is not None else unknown_key)

    async def _password_matches(self, user: User | None, password: str) -> bool:
        if len(password) > self._policy.password_max_length or not password:
            # Cannot match any stored password (the policy refused it); still cost one verification.
            await self._hasher.dummy_verify(password[: self._policy.password_max_length])
            return False
        if user is None:
            await self._hasher.dummy_verify(password)
            return False
        return await self._hasher.verify(password, user.password_hash)

    async def _second_factor(self, user: User, account: str, code: str, client_addr: str) -> None:
        if not code.strip():
            # The password was right: this attempt proved nothing wrong, so it does not count.
            await self._lockout.give_back(account)
            await self._audit_failure(user, "TOTP_REQUIRED", client_addr)
            raise Unauthenticated("TOTP_REQUIRED", "a TOTP code is required")
        try:
            ok = await self._totp.verify_and_consume(user, check_code_shape(code))
        except InvalidArgument:
            ok = False
        if not ok:
            await self._login_failed(account, user, "TOTP_INVALID", client_addr)
            raise Unauthenticated("TOTP_INVALID", "TOTP code is invalid")

    async def _login_failed(self, account: str, user: User | None, reason: str, client_addr: str) -> None:
        unlock_at = await self._lockout.failed(account)
        await self._audit_failure(user, reason, client_addr)
        if unlock_at:
            subject = str(user.id) if user is not None else None
            await self._audit.record("auth.lockout", "success", subject=subject, details={"client": client_addr})
            raise account_locked(unlock_at)

    async def _audit_failure(self, user: User | None, reason: str, client_addr: str) -> None:
        subject = str(user.id) if user is not None else None
        await self._audit.record(
            "auth.login", "failure", subject=subject, details={"client": client_addr, "reason": reason}
        )
