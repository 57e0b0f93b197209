"""Account lifecycle: change and reset a password, see and end sessions, change an address, delete an account.

docs/api.md "Account lifecycle" describes each RPC and its reasons; the rules come from docs/security.md:

* Re-authentication (item 22): changing the password, an address or deleting the account checks the
  current password and, with TOTP enabled, a fresh TOTP code (Login's factors and reasons), counted and
  throttled exactly like a login (``internal.biz.lockout``), under its own source per user and network.
* Password reset answers the same whether or not an account has the address (item 8): both branches
  derive a code, store its keyed hash and reply with a fresh id; the code is sent in the background so
  the sender's latency (or failure) shows in neither. Codes are stored only as keyed HMACs (item 10),
  bound to the account, single use, with the captcha lifetime and attempt limit, and sends are rate
  limited per target and per client network.
* A new address is proven as registration proves one (item 21): by a captcha code sent to it.
* Deletion erases the PII and the TOTP secret at once; the row stays, without PII, for
  ``AccountPolicy.deletion_grace`` (``auth.deletion_grace``) so the username and addresses cannot be
  taken over at once, then it is removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import string
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from internal.biz import pii
from internal.biz.auth import USERNAME_KEY_INDEX, CaptchaChecker
from internal.biz.captcha import CaptchaCheck, CaptchaSettings, CodeSenders
from internal.biz.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from internal.biz.identifiers import normalize_email, normalize_phone, normalize_username, username_key
from internal.biz.lockout import (
    AttemptKey,
    Lockout,
    account_locked,
    client_network,
    source_key,
    throttled,
    user_account,
)
from internal.biz.masking import mask_email, mask_phone
from internal.biz.password import PasswordHasher, check_password_policy
from internal.biz.ports import AuditLog, Caller, RateLimiter
from internal.biz.token import SessionRepo
from internal.biz.totp import TotpVerifier, check_code_shape
from internal.biz.user import User, UserRepo, email_key_hash

log = logging.getLogger(__name__)

# Default of auth.deletion_grace: how long a deleted account's username and addresses stay blocked.
DELETION_GRACE = timedelta(days=30)
# A deleted account's username: "~" never passes normalize_username, so nobody can sign in with it.
DELETED_USERNAME_PREFIX = "~"

PURPOSE_RESET = "password reset"
# A reset code leaves 0..SEND_JITTER_MS after the reply (see request_reset).
SEND_JITTER_MS = 250
NOTICE_EMAIL_CHANGED = "the email address of your account was changed"
NOTICE_PHONE_CHANGED = "the phone number of your account was changed"
NOTICE_PASSWORD_CHANGED = "the password of your account was changed"
NOTICE_PASSWORD_RESET = "the password of your account was reset"

_ID_BYTES = 24
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class SessionInfo:
    """An active refresh-token family as stored."""

    session_id: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    client_addr: str
    user_agent: str


@dataclass(frozen=True)
class SessionView:
    session_id: str
    created_at: int
    last_used_at: int
    expires_at: int
    client_address: str
    user_agent: str
    current: bool


class AccountRepo(Protocol):
    """PostgreSQL side of the lifecycle (``internal.data.account.PgAccountRepo``)."""

    async def active_sessions(self, user_id: int) -> list[SessionInfo]:
        """Unrevoked, unexpired families of the user, newest first."""
        ...

    async def owns_active_session(self, user_id: int, session_id: str) -> bool: ...

    async def find_active_user_id(self, field: str, hashes: Sequence[str]) -> int | None:
        """The id of the live (not deleted) account whose ``field`` ("email"/"phone") blind index is in ``hashes``."""
        ...

    async def replace_email(self, user_id: int, email: pii.IndexedField, key_hash: str, earlier: Sequence[str]) -> None:
        """Replace value and blind indexes in one statement; a taken address raises ``Conflict("USER_EXISTS")``.

        ``earlier``: blind indexes a row stored before the users' key may hold for the same address.
        """
        ...

    async def replace_phone(self, user_id: int, phone: pii.IndexedField, earlier: Sequence[str]) -> None: ...

    async def erase(self, user_id: int, password_hash: str, username_hash: str) -> list[str]:
        """In one transaction: drop the PII, TOTP secret and sessions, keep only keyed indexes; returns the
        ids of the sessions deleted. False-free: an already deleted account returns []."""
        ...

    async def purge_deleted(self, grace: timedelta) -> int:
        """Remove accounts deleted more than ``grace`` ago; returns how many."""
        ...


class AccountAudit(AuditLog, Protocol):
    """The audit trail plus the one erasure it allows (``internal.data.audit.PgAuditLog``)."""

    async def forget_clients(self, party: str) -> int:
        """Strip client addresses from the rows about ``party``; what happened and when stays."""
        ...


class ResetCodeStore(Protocol):
    """Reset codes in Redis (``internal.data.account.RedisResetCodeStore``); atomic across replicas."""

    async def save(self, reset_id: str, code_hash: str, user_id: int, ttl: timedelta) -> None: ...

    async def check(self, reset_id: str, code_hash: str, max_attempts: int) -> tuple[CaptchaCheck, int]:
        """Compare without consuming; a mismatch counts an attempt, the last one deletes. The user id on OK."""
        ...

    async def consume(self, reset_id: str, code_hash: str) -> bool:
        """Delete the code if it still matches; True for exactly one caller."""
        ...


@dataclass(frozen=True)
class AccountPolicy:
    password_max_length: int = 128
    codes: CaptchaSettings = field(default_factory=CaptchaSettings)
    deletion_grace: timedelta = DELETION_GRACE


def is_deleted(user: User) -> bool:
    return user.username.startswith(DELETED_USERNAME_PREFIX)


def _unix(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment is not None else 0


class AccountUsecase:
    def __init__(
        self,
        users: UserRepo,
        accounts: AccountRepo,
        sessions: SessionRepo,
        resets: ResetCodeStore,
        cipher: pii.FieldCipher,
        hasher: PasswordHasher,
        lockout: Lockout,
        captcha: CaptchaChecker,
        senders: CodeSenders,
        limiter: RateLimiter,
        audit: AccountAudit,
        policy: AccountPolicy,
        code_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._accounts = accounts
        self._sessions = sessions
        self._resets = resets
        self._cipher = cipher
        self._hasher = hasher
        self._lockout = lockout
        self._captcha = captcha
        self._senders = senders
        self._limiter = limiter
        self._audit = audit
        self._policy = policy
        # Login's verifier: a code's time step is recorded as used, so a code re-authenticates once.
        self._totp = TotpVerifier(users, cipher, clock)
        self._key = hmac.new(code_key, b"authkms/password-reset/v1", hashlib.sha256).digest()
        self._background: set[asyncio.Task[None]] = set()

    # -- ChangePassword ------------------------------------------------------------------------------

    async def change_password(
        self, caller: Caller, current: str, new: str, client_addr: str = "", totp_code: str = ""
    ) -> int:
        """Replace the password; every other session ends, the caller's goes on (ASVS 7.4.3). Returns how many ended."""
        user = await self._own_user(caller)
        email = await self._email(user)
        check_password_policy(new, self._policy.password_max_length, username=user.username, email=email)
        await self._reauthenticate(user, current, "password-change", client_addr, "account.password_change", totp_code)
        await self._users.update_password(user.id, await self._hasher.hash(new))
        ended = await self._sessions.revoke_user_families(user.id, caller.session_id, "password_changed")
        await self._audit.record(
            "account.password_change",
            "success",
            actor=str(user.id),
            subject=str(user.id),
            details={"client": client_addr, "sessions_ended": ended},
        )
        await self._notify_owner(user, email, NOTICE_PASSWORD_CHANGED)
        return ended

    # -- Password reset ------------------------------------------------------------------------------

    async def request_reset(self, target: str, client_addr: str = "") -> str:
        """A reset id; the code goes to ``target`` when an account has it. The same work either way."""
        text = target.strip()
        if not text or len(text) > 254:
            raise InvalidArgument("VALIDATION_ERROR", "target must be an email address or phone", {"field": "target"})
        kind = pii.EMAIL if "@" in text else pii.PHONE
        normalized = normalize_email(text) if kind == pii.EMAIL else normalize_phone(text)
        codes = self._policy.codes
        await self._throttle(f"reset:client:{client_network(client_addr)}", codes.send_limit_per_client)
        await self._throttle(f"reset:target:{self._digest('target', normalized)}", codes.send_limit_per_target)
        user_id = await self._accounts.find_active_user_id(kind, self._cipher.lookup_hashes(kind, normalized))
        reset_id = secrets.token_urlsafe(_ID_BYTES)
        code = "".join(secrets.choice(string.digits) for _ in range(codes.length))
        await self._resets.save(reset_id, self._code_hash(reset_id, code), user_id or 0, codes.expiration)
        sender = self._senders.email if kind == pii.EMAIL else self._senders.sms
        masked = mask_email(normalized) if kind == pii.EMAIL else mask_phone(normalized)
        # Nothing is sent for an address no account has. Both branches schedule the same delayed job, so the
        # reply waits for neither, and the send (when there is one) lands at a random later moment instead of
        # slowing down this reply or the next one.
        job = sender.send(normalized, code, PURPOSE_RESET) if user_id else None
        self._spawn(job, masked)
        await self._audit.record(
            "account.password_reset_request",
            "success",
            subject=str(user_id) if user_id else None,
            details={"client": client_addr},
        )
        return reset_id

    async def confirm_reset(self, reset_id: str, code: str, new_password: str, client_addr: str = "") -> None:
        """Set the new password with a reset code; every session ends and the account's lock is cleared."""
        code = code.strip()
        if not reset_id or not code:
            raise InvalidArgument("CAPTCHA_REQUIRED", "reset_id and code are required")
        if not _ID_PATTERN.fullmatch(reset_id) or len(code) > 16:
            raise InvalidArgument("CAPTCHA_EXPIRED", "the reset code has expired; request a new one")
        code_hash = self._code_hash(reset_id, code)
        outcome, user_id = await self._resets.check(reset_id, code_hash, self._policy.codes.max_attempts)
        if outcome is CaptchaCheck.UNKNOWN:
            raise InvalidArgument("CAPTCHA_EXPIRED", "the reset code has expired; request a new one")
        if outcome is not CaptchaCheck.OK:
            raise InvalidArgument("CAPTCHA_INVALID", "the reset code is not valid")
        user = await self._users.get(user_id) if user_id else None
        if user is None or is_deleted(user):
            await self._resets.consume(reset_id, code_hash)
            raise InvalidArgument("CAPTCHA_EXPIRED", "the reset code has expired; request a new one")
        email = await self._email(user)
        # Checked before the code is spent, so a weak password can be corrected with the same code.
        check_password_policy(new_password, self._policy.password_max_length, username=user.username, email=email)
        if not await self._resets.consume(reset_id, code_hash):
            raise InvalidArgument("CAPTCHA_EXPIRED", "the reset code has expired; request a new one")
        await self._users.update_password(user.id, await self._hasher.hash(new_password))
        ended = await self._sessions.revoke_user_families(user.id, "", "password_reset")
        await self._lockout.unlock(user_account(user.id))
        await self._audit.record(
            "account.password_reset",
            "success",
            subject=str(user.id),
            details={"client": client_addr, "sessions_ended": ended},
        )
        await self._notify_owner(user, email, NOTICE_PASSWORD_RESET)

    # -- Sessions ------------------------------------------------------------------------------------

    async def list_sessions(self, caller: Caller, username: str = "") -> list[SessionView]:
        user = await self._subject(caller, username)
        return [
            SessionView(
                session_id=s.session_id,
                created_at=_unix(s.created_at),
                last_used_at=_unix(s.last_used_at or s.created_at),
                expires_at=_unix(s.expires_at),
                client_address=s.client_addr,
                user_agent=s.user_agent,
                current=bool(caller.session_id) and s.session_id == caller.session_id,
            )
            for s in await self._accounts.active_sessions(user.id)
        ]

    async def revoke_session(self, caller: Caller, session_id: str, username: str = "", client_addr: str = "") -> None:
        text = session_id.strip()
        if not text:
            raise InvalidArgument("VALIDATION_ERROR", "session_id is required", {"field": "session_id"})
        user = await self._subject(caller, username)
        if not _UUID.fullmatch(text) or not await self._accounts.owns_active_session(user.id, text):
            raise NotFound("SESSION_NOT_FOUND", "no such active session")
        reason = "revoked" if caller.user_id == user.id else "revoked_by_admin"
        await self._sessions.revoke_family(text, reason)
        await self._audit_sessions(caller, user, "account.session_revoke", 1, client_addr)

    async def revoke_other_sessions(self, caller: Caller, username: str = "", client_addr: str = "") -> int:
        """The caller's other sessions; with an admin credential every session of ``username``."""
        user = await self._subject(caller, username)
        keep = caller.session_id if caller.user_id == user.id else ""
        ended = await self._sessions.revoke_user_families(user.id, keep, "revoke_others")
        await self._audit_sessions(caller, user, "account.sessions_revoke", ended, client_addr)
        return ended

    # -- Address change ------------------------------------------------------------------------------

    async def change_email(
        self,
        caller: Caller,
        new_email: str,
        captcha_id: str,
        captcha_code: str,
        password: str,
        client_addr: str = "",
        totp_code: str = "",
    ) -> None:
        email = normalize_email(new_email)
        user = await self._own_user(caller)
        await self._prove_address(captcha_id, captcha_code)
        await self._reauthenticate(user, password, "email-change", client_addr, "account.email_change", totp_code)
        if self._captcha.enabled:
            await self._captcha.consume(captcha_id, captcha_code, [email], require_target=True)
        old = await self._email(user)
        sealed = await pii.seal_indexed(self._cipher, pii.EMAIL, email, pii.user_context(user.id))
        await self._accounts.replace_email(
            user.id, sealed, email_key_hash(self._cipher, email), self._cipher.lookup_hashes(pii.EMAIL, email)[1:]
        )
        await self._audit.record(
            "account.email_change", "success", actor=str(user.id), subject=str(user.id), details={"client": client_addr}
        )
        if old and old != email:
            await self._notify(self._senders.email, old, NOTICE_EMAIL_CHANGED, mask_email(old))

    async def change_phone(
        self,
        caller: Caller,
        new_phone: str,
        captcha_id: str,
        captcha_code: str,
        password: str,
        client_addr: str = "",
        totp_code: str = "",
    ) -> None:
        phone = normalize_phone(new_phone)
        user = await self._own_user(caller)
        await self._prove_address(captcha_id, captcha_code)
        await self._reauthenticate(user, password, "phone-change", client_addr, "account.phone_change", totp_code)
        if self._captcha.enabled:
            await self._captcha.consume(captcha_id, captcha_code, [phone], require_target=True)
        context = pii.user_context(user.id)
        old = (
            (await self._cipher.decrypt(pii.PHONE, user.phone_encrypted, context)).decode()
            if user.phone_encrypted
            else ""
        )
        sealed = await pii.seal_indexed(self._cipher, pii.PHONE, phone, context)
        await self._accounts.replace_phone(user.id, sealed, self._cipher.lookup_hashes(pii.PHONE, phone)[1:])
        await self._audit.record(
            "account.phone_change", "success", actor=str(user.id), subject=str(user.id), details={"client": client_addr}
        )
        if old and old != phone:
            await self._notify(self._senders.sms, old, NOTICE_PHONE_CHANGED, mask_phone(old))

    # -- DeleteAccount -------------------------------------------------------------------------------

    async def delete_account(
        self, caller: Caller, password: str, username: str = "", client_addr: str = "", totp_code: str = ""
    ) -> None:
        """Erase PII and TOTP secret, end every session; the keyed indexes block reuse for the grace period."""
        user = await self._subject(caller, username) if username.strip() else await self._own_user(caller)
        if caller.user_id == user.id:
            await self._reauthenticate(user, password, "account-delete", client_addr, "account.delete", totp_code)
        by = "self" if caller.user_id == user.id else "admin"
        await self._sessions.revoke_user_families(user.id, "", "account_deleted")
        unusable = await self._hasher.hash(secrets.token_urlsafe(32))
        username_hash = self._cipher.blind_index(USERNAME_KEY_INDEX, username_key(user.username))
        for session_id in await self._accounts.erase(user.id, unusable, username_hash):
            # The rows are gone; this only tells every replica's cache (a missing family is revoked anyway).
            await self._sessions.revoke_family(session_id, "account_deleted")
        # The audit keeps what happened and when, under the bare account number; not where from.
        await self._audit.forget_clients(str(user.id))
        await self._lockout.unlock(user_account(user.id))
        await self._audit.record("account.delete", "success", subject=str(user.id), details={"by": by})

    async def purge_deleted(self) -> int:
        """Remove deleted accounts whose grace period has ended (frees their username and addresses)."""
        return await self._accounts.purge_deleted(self._policy.deletion_grace)

    # -- helpers -------------------------------------------------------------------------------------

    async def _own_user(self, caller: Caller) -> User:
        if caller.user_id is None:
            raise PermissionDenied("PERMISSION_DENIED", "this call needs a user's access token")
        user = await self._users.get(caller.user_id)
        if user is None or is_deleted(user):
            raise NotFound("USER_NOT_FOUND", "user not found")
        return user

    async def _subject(self, caller: Caller, username: str) -> User:
        """The caller's own account, or (``auth.admin`` only) the one named; as LockStatus decides."""
        if not username.strip():
            return await self._own_user(caller)
        found = await self._users.find_by_username(normalize_username(username))
        if found is None or is_deleted(found):
            if caller.is_admin:
                raise NotFound("USER_NOT_FOUND", "user not found")
            raise PermissionDenied("PERMISSION_DENIED", "you may only manage your own account")
        if not caller.may_act_for(found.id):
            raise PermissionDenied("PERMISSION_DENIED", "you may only manage your own account")
        return found

    async def _reauthenticate(
        self, user: User, password: str, purpose: str, client_addr: str, event: str, totp_code: str = ""
    ) -> None:
        """The password, and with TOTP enabled a fresh code: the same factors and reasons as Login."""
        if not password:
            raise InvalidArgument("VALIDATION_ERROR", "the current password is required", {"field": "password"})
        key = AttemptKey(user_account(user.id), source_key(str(user.id), client_addr, purpose))
        decision = await self._lockout.begin(key)
        if not await self._hasher.verify(password, user.password_hash):
            await self._reauth_failed(key, user, event, "INVALID_CREDENTIALS")
            raise Unauthenticated("INVALID_CREDENTIALS", "invalid credentials")
        if decision.locked_until:
            await self._lockout.give_back(key)
            raise account_locked(decision.locked_until)
        if user.totp_enabled:
            if not totp_code.strip():
                # The password was right; a missing code proves nothing wrong, so it does not count (as at login).
                await self._lockout.give_back(key)
                raise Unauthenticated("TOTP_REQUIRED", "a TOTP code is required")
            try:
                ok = await self._totp.verify_and_consume(user, check_code_shape(totp_code))
            except InvalidArgument:
                ok = False
            if not ok:
                await self._reauth_failed(key, user, event, "TOTP_INVALID")
                raise Unauthenticated("TOTP_INVALID", "TOTP code is invalid")
        await self._lockout.succeeded(key)

    async def _reauth_failed(self, key: AttemptKey, user: User, event: str, reason: str) -> None:
        unlock_at = await self._lockout.failed(key)
        await self._audit.record(event, "failure", actor=str(user.id), subject=str(user.id), details={"reason": reason})
        if unlock_at:
            await self._audit.record("auth.lockout", "success", subject=str(user.id))

    async def _prove_address(self, captcha_id: str, captcha_code: str) -> None:
        # Refused before the password is counted; the code itself is consumed after it.
        if self._captcha.enabled and not (captcha_id and captcha_code.strip()):
            raise InvalidArgument("CAPTCHA_REQUIRED", "a code sent to the new address is required")

    async def _email(self, user: User) -> str:
        if user.email_encrypted is None:
            return ""
        return (await self._cipher.decrypt(pii.EMAIL, user.email_encrypted, pii.user_context(user.id))).decode()

    async def _notify(self, sender: Any, target: str, notice: str, masked: str) -> None:
        # Only the fixed notice text leaves: never a password, code or token.
        try:
            await sender.send(target, "", notice)
        except Exception:  # the change is stored; a lost notice must not turn it into an error
            log.warning("account notice not delivered", extra={"target": masked})

    async def _notify_owner(self, user: User, email: str, notice: str) -> None:
        """Tell the owner at the account's email, or its phone when it has no email."""
        if email:
            await self._notify(self._senders.email, email, notice, mask_email(email))
        elif user.phone_encrypted:
            phone = (await self._cipher.decrypt(pii.PHONE, user.phone_encrypted, pii.user_context(user.id))).decode()
            await self._notify(self._senders.sms, phone, notice, mask_phone(phone))

    async def _audit_sessions(self, caller: Caller, user: User, event: str, ended: int, client_addr: str) -> None:
        actor = str(caller.user_id) if caller.user_id is not None else "admin"
        await self._audit.record(
            event,
            "success",
            actor=actor,
            subject=str(user.id),
            details={"client": client_addr, "sessions_ended": ended},
        )

    async def _throttle(self, bucket: str, limit: int) -> None:
        verdict = await self._limiter.hit(bucket, limit, self._policy.codes.send_window.total_seconds())
        if not verdict.allowed:
            raise throttled(verdict.retry_after)

    def _spawn(self, job: Coroutine[Any, Any, None] | None, masked: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job, masked))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _run(job: Coroutine[Any, Any, None] | None, masked: str) -> None:
        await asyncio.sleep(secrets.randbelow(SEND_JITTER_MS) / 1000)
        if job is None:
            return
        try:
            await job
        except Exception:
            log.warning("password reset code not delivered", extra={"target": masked})

    def _digest(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def _code_hash(self, reset_id: str, code: str) -> str:
        return self._digest("code", f"{reset_id}\x00{code}")
