"""TOTP (RFC 6238): 30-second steps, 6 digits, ±1 step, HMAC-SHA1 (what authenticator apps support).

The 160-bit secret is stored only encrypted (field ``totp_secret``, bound to the user's row) and is
enforced only after the user proved possession with a valid code. A code is accepted at most once:
the matching time step is recorded with an atomic ``UPDATE … WHERE totp_last_step < step``, so a
replayed code — even one racing its first use on another replica — is refused.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from internal.biz import pii
from internal.biz.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from internal.biz.lockout import AttemptKey, Lockout, account_locked, source_key, user_account
from internal.biz.password import PasswordHasher
from internal.biz.ports import AuditLog, Caller
from internal.biz.token import TokenUsecase
from internal.biz.user import User, UserRepo

TOTP_DIGITS = 6
TOTP_PERIOD = 30
TOTP_WINDOW = 1
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation
_CODE_SHAPE = re.compile(r"\d{6}")


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, TOTP_DIGITS, SHA1(), TOTP_PERIOD, enforce_key_length=False)  # noqa: S303


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    """RFC 4648 base32 without padding, as authenticator apps expect."""
    return base64.b32encode(secret).decode().rstrip("=")


def otpauth_uri(secret: bytes, account: str, issuer: str) -> str:
    return _totp(secret).get_provisioning_uri(account, issuer)


def generate_code(secret: bytes, at: float) -> str:
    return _totp(secret).generate(int(at)).decode()


def check_code_shape(code: str) -> str:
    text = code.strip()
    if not _CODE_SHAPE.fullmatch(text):
        raise InvalidArgument("VALIDATION_ERROR", "a TOTP code is 6 digits", {"field": "totp_code"})
    return text


def matching_step(secret: bytes, code: str, now: float, window: int = TOTP_WINDOW) -> int | None:
    """The time step (now ± window) whose code equals ``code``, or None. Compares in constant time."""
    current = int(now) // TOTP_PERIOD
    totp = _totp(secret)
    found: int | None = None
    for step in range(current - window, current + window + 1):
        if hmac.compare_digest(totp.generate(step * TOTP_PERIOD), code.encode()):
            found = step
    return found


@dataclass(frozen=True)
class TotpEnrollment:
    secret: str
    otpauth_uri: str


class TotpVerifier:
    """Checks a code against a user's stored secret and records its step as used (single use)."""

    def __init__(self, users: UserRepo, cipher: pii.FieldCipher, clock: Callable[[], float] = time.time) -> None:
        self._users = users
        self._cipher = cipher
        self._clock = clock

    async def secret(self, user: User) -> bytes:
        if user.totp_secret_encrypted is None:
            raise FailedPrecondition("TOTP_NOT_ENROLLED", "TOTP is not enrolled")
        return await self._cipher.decrypt(pii.TOTP_SECRET, user.totp_secret_encrypted, pii.user_context(user.id))

    async def step_for(self, user: User, code: str) -> int | None:
        """The matching step of a well-formed code, without consuming it."""
        return matching_step(await self.secret(user), code, self._clock())

    async def verify_and_consume(self, user: User, code: str) -> bool:
        step = await self.step_for(user, code)
        if step is None:
            return False
        return await self._users.consume_totp_step(user.id, step)


class TotpUsecase:
    """Enrollment (password → begin, confirm with a code) and disabling (password + code).

    Changing a factor re-authenticates (ASVS 6.4.x, 7.4.3): beginning enrollment needs the current
    password, and every password or code checked here is counted and throttled exactly like a login
    (``internal.biz.lockout``), so a stolen access token cannot be used to guess either. Enabling or
    disabling TOTP ends the user's other sessions: whoever else holds one must sign in again, now
    under the new rules.
    """

    def __init__(
        self,
        users: UserRepo,
        cipher: pii.FieldCipher,
        hasher: PasswordHasher,
        lockout: Lockout,
        tokens: TokenUsecase,
        audit: AuditLog,
        issuer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._cipher = cipher
        self._hasher = hasher
        self._lockout = lockout
        self._tokens = tokens
        self._audit = audit
        self._issuer = issuer
        self._verifier = TotpVerifier(users, cipher, clock)

    async def begin_enrollment(self, caller: Caller, password: str, client_addr: str = "") -> TotpEnrollment:
        """A fresh pending secret (replacing any earlier pending one) once the password is re-checked."""
        user = await self._user(caller)
        if user.totp_enabled:
            raise FailedPrecondition("TOTP_ALREADY_ENABLED", "TOTP is already enabled")
        key = self._key(user, "totp-enroll", client_addr)
        await self._check_password(user, key, password, "auth.totp_enroll")
        await self._lockout.succeeded(key)
        secret = new_secret()
        sealed = await self._cipher.encrypt(pii.TOTP_SECRET, secret, pii.user_context(user.id))
        await self._users.set_pending_totp(user.id, sealed.ciphertext, sealed.key_version)
        await self._audit.record("auth.totp_enroll", "success", actor=str(user.id), subject=str(user.id))
        return TotpEnrollment(encode_secret(secret), otpauth_uri(secret, user.username, self._issuer))

    async def confirm_enrollment(self, caller: Caller, code: str, client_addr: str = "") -> None:
        """Enable TOTP once the caller shows a current code for the pending secret."""
        code = check_code_shape(code)
        user = await self._user(caller)
        if user.totp_enabled:
            raise FailedPrecondition("TOTP_ALREADY_ENABLED", "TOTP is already enabled")
        if user.totp_secret_encrypted is None:
            raise FailedPrecondition("TOTP_NOT_ENROLLED", "TOTP is not enrolled")
        key = self._key(user, "totp-confirm", client_addr)
        await self._lockout.begin(key)
        step = await self._verifier.step_for(user, code)
        if step is None:
            await self._fail(key, user.id, "auth.totp_enable", "TOTP_INVALID")
            raise Unauthenticated("TOTP_INVALID", "TOTP code is invalid")
        if not await self._users.enable_totp(user.id, step):
            # Lost a race with another confirmation (or the code's step was used already).
            raise FailedPrecondition("TOTP_ALREADY_ENABLED", "TOTP is already enabled")
        await self._lockout.succeeded(key)
        ended = await self._tokens.end_other_sessions(caller, "totp_enabled")
        await self._audit.record(
            "auth.totp_enable", "success", actor=str(user.id), subject=str(user.id), details={"sessions_ended": ended}
        )

    async def disable(self, caller: Caller, password: str, code: str, client_addr: str = "") -> None:
        """Turn TOTP off after re-checking the password and a current code."""
        code = check_code_shape(code)
        user = await self._user(caller)
        if not user.totp_enabled:
            raise FailedPrecondition("TOTP_NOT_ENROLLED", "TOTP is not enabled")
        key = self._key(user, "totp-disable", client_addr)
        await self._check_password(user, key, password, "auth.totp_disable")
        if not await self._verifier.verify_and_consume(user, code):
            await self._fail(key, user.id, "auth.totp_disable", "TOTP_INVALID")
            raise Unauthenticated("TOTP_INVALID", "TOTP code is invalid")
        await self._lockout.succeeded(key)
        await self._users.disable_totp(user.id)
        ended = await self._tokens.end_other_sessions(caller, "totp_disabled")
        await self._audit.record(
            "auth.totp_disable", "success", actor=str(user.id), subject=str(user.id), details={"sessions_ended": ended}
        )

    @staticmethod
    def _key(user: User, purpose: str, client_addr: str) -> AttemptKey:
        return AttemptKey(user_account(user.id), source_key(str(user.id), client_addr, purpose))

    async def _check_password(self, user: User, key: AttemptKey, password: str, event: str) -> None:
        decision = await self._lockout.begin(key)
        if not await self._hasher.verify(password, user.password_hash):
            await self._fail(key, user.id, event, "INVALID_CREDENTIALS")
            raise Unauthenticated("INVALID_CREDENTIALS", "invalid credentials")
        if decision.locked_until:
            await self._lockout.give_back(key)
            raise account_locked(decision.locked_until)

    async def _fail(self, key: AttemptKey, user_id: int, event: str, reason: str) -> None:
        unlock_at = await self._lockout.failed(key)
        await self._audit.record(event, "failure", actor=str(user_id), subject=str(user_id), details={"reason": reason})
        if unlock_at:
            await self._audit.record("auth.lockout", "success", subject=str(user_id))

    async def _user(self, caller: Caller) -> User:
        user = await self._users.get(caller.user_id) if caller.user_id is not None else None
        if user is None:
            raise NotFound("USER_NOT_FOUND", "user not found")
        return user
