"""In-memory fakes of the auth repositories and collaborators (same semantics as the real adapters)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from internal.biz import pii
from internal.biz.auth import AuthPolicy, AuthUsecase
from internal.biz.errors import Conflict, InvalidArgument
from internal.biz.lockout import AttemptDecision, AttemptKey, Lockout, LockoutPolicy, LockState
from internal.biz.ports import RateDecision
from internal.biz.token import Rotation, RotationResult, TokenPolicy, TokenUsecase
from internal.biz.totp import TotpUsecase
from internal.biz.user import KeylessUser, NewUser, User, UserUsecase
from internal.data.signing_keys import JwtSigner


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class FakeCipher:
    """Reversible, context-checking stand-in for the KMS: 'enc:<field>:<context>:<plaintext hex>'."""

    def __init__(self, key_version: int = 3) -> None:
        self.key_version = key_version

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> pii.Sealed:
        ctx = ",".join(f"{k}={v}" for k, v in sorted(context.items()))
        return pii.Sealed(f"enc:{field}:{ctx}:{plaintext.hex()}".encode(), self.key_version)

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        ctx = ",".join(f"{k}={v}" for k, v in sorted(context.items()))
        prefix = f"enc:{field}:{ctx}:"
        text = ciphertext.decode()
        if not text.startswith(prefix):
            raise InvalidArgument("CIPHERTEXT_INVALID", "ciphertext is invalid")
        return bytes.fromhex(text[len(prefix) :])

    def blind_index(self, field: str, value: str) -> str:
        normalized = value.strip().lower() if field == pii.EMAIL else value.strip()
        return hmac.new(b"index-key-" + field.encode(), normalized.encode(), hashlib.sha256).hexdigest()

    def lookup_hashes(self, field: str, value: str) -> list[str]:
        return [self.blind_index(field, value)]


class FakeUserRepo:
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    async def next_id(self) -> int:
        return next(self._ids)

    async def create(self, user: NewUser) -> None:
        for row in self.rows.values():
            if (
                row["username"].lower() == user.username.lower()
                or row["username_key"] == user.username_key
                or row["email_hash"] == user.email_hash
                or row["email_key_hash"] == user.email_key_hash
                or (user.phone_hash is not None and row["phone_hash"] == user.phone_hash)
            ):
                raise Conflict("USER_EXISTS", "username, email or phone is already registered")
        self.rows[user.id] = {
            **user.__dict__,
            "totp_secret_encrypted": None,
            "totp_enabled": False,
            "totp_last_step": None,
            "created_at": datetime.now(UTC),
        }

    def _user(self, row: dict[str, Any] | None) -> User | None:
        if row is None:
            return None
        return User(
            id=row["id"],
            username=row["username"],
            password_hash=row["password_hash"],
            email_encrypted=row["email_encrypted"],
            phone_encrypted=row["phone_encrypted"],
            name_encrypted=row["name_encrypted"],
            totp_secret_encrypted=row["totp_secret_encrypted"],
            totp_enabled=row["totp_enabled"],
            totp_last_step=row["totp_last_step"],
            created_at=row["created_at"],
        )

    async def get(self, user_id: int) -> User | None:
        return self._user(self.rows.get(user_id))

    async def find_by_username(self, username: str) -> User | None:
        return self._user(next((r for r in self.rows.values() if r["username"].lower() == username.lower()), None))

    async def find_by_email_hash(self, *email_hashes: str) -> User | None:
        return self._user(next((r for r in self.rows.values() if r["email_hash"] in email_hashes), None))

    async def find_by_phone_hash(self, *phone_hashes: str) -> User | None:
        return self._user(next((r for r in self.rows.values() if r["phone_hash"] in phone_hashes), None))

    async def update_password(self, user_id: int, password_hash: str) -> None:
        self.rows[user_id]["password_hash"] = password_hash

    async def set_pending_totp(self, user_id: int, secret_encrypted: bytes, key_version: int) -> None:
        row = self.rows[user_id]
        if not row["totp_enabled"]:
            row["totp_secret_encrypted"] = secret_encrypted
            row["pii_key_version"] = min(row["pii_key_version"], key_version)

    async def enable_totp(self, user_id: int, step: int) -> bool:
        row = self.rows[user_id]
        last = row["totp_last_step"]
        if row["totp_enabled"] or row["totp_secret_encrypted"] is None or (last is not None and last >= step):
            return False
        row["totp_enabled"], row["totp_last_step"] = True, step
        return True

    async def disable_totp(self, user_id: int) -> None:
        self.rows[user_id]["totp_enabled"] = False
        self.rows[user_id]["totp_secret_encrypted"] = None

    async def without_identifier_keys(self, after_id: int, limit: int) -> list[KeylessUser]:
        rows = sorted((r for r in self.rows.values() if r["username_key"] is None and r["id"] > after_id), key=id_of)
        return [KeylessUser(r["id"], r["username"], r["email_encrypted"]) for r in rows[:limit]]

    async def set_identifier_keys(self, user_id: int, username_key: str, email_key_hash: str | None) -> bool:
        others = [r for r in self.rows.values() if r["id"] != user_id]
        taken = any(r["username_key"] == username_key for r in others) or (
            email_key_hash is not None and any(r["email_key_hash"] == email_key_hash for r in others)
        )
        if taken or self.rows[user_id]["username_key"] is not None:
            return False
        self.rows[user_id].update(username_key=username_key, email_key_hash=email_key_hash)
        return True

    async def consume_totp_step(self, user_id: int, step: int) -> bool:
        row = self.rows[user_id]
        last = row["totp_last_step"]
        if not row["totp_enabled"] or (last is not None and last >= step):
            return False
        row["totp_last_step"] = step
        return True


def id_of(row: dict[str, Any]) -> int:
    return int(row["id"])


class CountingHasher:
    """Fast, deterministic stand-in for Argon2 that counts the verifications it runs."""

    def __init__(self, params: str = "m=19456,t=2,p=1") -> None:
        self.params = params
        self.verifications = 0
        self.dummy_verifications = 0
        self.hashes = 0

    async def hash(self, password: str) -> str:
        self.hashes += 1
        return f"$fake${self.params}${hashlib.sha256(password.encode()).hexdigest()}"

    async def verify(self, password: str, encoded: str) -> bool:
        self.verifications += 1
        return encoded.rsplit("$", 1)[-1] == hashlib.sha256(password.encode()).hexdigest()

    def needs_rehash(self, encoded: str) -> bool:
        return f"${self.params}$" not in encoded

    async def dummy_verify(self, password: str) -> None:
        self.dummy_verifications += 1
        self.verifications += 1


class FakeGuard:
    """In-memory LoginGuard with the same rules as the Redis scripts (without the counting window)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.sources: dict[tuple[str, str], tuple[int, float]] = {}  # (account, source) → (count, last)
        self.failures: dict[str, int] = {}
        self.locks: dict[str, float] = {}

    def _lock_until(self, account: str) -> float:
        until = self.locks.get(account, 0.0)
        if until and until <= self._clock():
            self.locks.pop(account)
            return 0.0
        return until

    async def begin_attempt(self, key: AttemptKey, policy: LockoutPolicy) -> AttemptDecision:
        now = self._clock()
        n, last = self.sources.get((key.account, key.source), (0, 0.0))
        if n >= policy.free_attempts:
            wait = min(policy.delay_seconds * 2 ** (n - policy.free_attempts), policy.max_delay_seconds)
            if now < last + wait:
                return AttemptDecision(False, last + wait - now)
        self.sources[(key.account, key.source)] = (n + 1, now)
        self.failures[key.account] = self.failures.get(key.account, 0) + 1
        return AttemptDecision(True, 0.0, self._lock_until(key.account))

    async def record_failure(self, account: str, policy: LockoutPolicy) -> float:
        if self.failures.get(account, 0) < policy.hard_lock_attempts or self._lock_until(account):
            return 0.0
        self.locks[account] = self._clock() + policy.lock_seconds
        return self.locks[account]

    async def give_back(self, key: AttemptKey) -> None:
        n, last = self.sources.get((key.account, key.source), (0, 0.0))
        self.sources[(key.account, key.source)] = (max(n - 1, 0), last)
        self.failures[key.account] = max(self.failures.get(key.account, 0) - 1, 0)

    async def succeeded(self, key: AttemptKey) -> None:
        self.sources.pop((key.account, key.source), None)
        self.failures.pop(key.account, None)

    async def lock(self, account: str, seconds: float) -> float:
        self.locks[account] = self._clock() + seconds
        return self.locks[account]

    async def unlock(self, account: str) -> None:
        self.failures.pop(account, None)
        self.locks.pop(account, None)

    async def status(self, account: str) -> LockState:
        until = self._lock_until(account)
        return LockState(bool(until), until, self.failures.get(account, 0))


@dataclass
class _Token:
    family_id: str
    expires_at: float
    issued_at: float
    used: bool = False


@dataclass
class _Family:
    user_id: int
    expires_at: float
    revoked: str | None = None
    client_addr: str = ""
    user_agent: str = ""
    last_used_at: float = 0.0


class FakeSessions:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.tokens: dict[str, _Token] = {}
        self.families: dict[str, _Family] = {}
        self.revoked_jtis: set[str] = set()

    async def start_family(
        self,
        family_id: str,
        user_id: int,
        family_ttl: timedelta,
        token_hash: str,
        token_ttl: timedelta,
        client_addr: str = "",
        user_agent: str = "",
    ) -> None:
        now = self._clock()
        family = _Family(user_id, now + family_ttl.total_seconds(), client_addr=client_addr, user_agent=user_agent)
        self.families[family_id] = family
        self.tokens[token_hash] = _Token(family_id, min(now + token_ttl.total_seconds(), family.expires_at), now)

    async def rotate_refresh_token(
        self, old_hash: str, new_hash: str, token_ttl: timedelta, client_addr: str = ""
    ) -> RotationResult:
        now = self._clock()
        token = self.tokens.get(old_hash)
        if token is None:
            return RotationResult(Rotation.UNKNOWN)
        family = self.families[token.family_id]
        if token.used:
            return RotationResult(Rotation.REUSED, token.family_id, family.user_id)
        if family.revoked:
            return RotationResult(Rotation.REVOKED, token.family_id, family.user_id)
        if token.expires_at <= now or family.expires_at <= now:
            return RotationResult(Rotation.EXPIRED, token.family_id, family.user_id)
        token.used = True
        family.last_used_at, family.client_addr = now, client_addr or family.client_addr
        self.tokens[new_hash] = _Token(token.family_id, min(now + token_ttl.total_seconds(), family.expires_at), now)
        return RotationResult(Rotation.ROTATED, token.family_id, family.user_id)

    async def revoke_family(self, family_id: str, reason: str) -> None:
        if family_id in self.families and not self.families[family_id].revoked:
            self.families[family_id].revoked = reason

    async def revoke_access_token(self, jti: str, expires_at: int) -> None:
        self.revoked_jtis.add(jti)

    async def is_revoked(self, jti: str, family_id: str) -> bool:
        family = self.families.get(family_id)
        return jti in self.revoked_jtis or family is None or family.revoked is not None

    async def revoke_user_families(self, user_id: int, keep_family_id: str, reason: str) -> int:
        ended = 0
        for family_id, family in self.families.items():
            if family.user_id == user_id and family_id != keep_family_id and not family.revoked:
                family.revoked = reason
                ended += 1
        return ended


@dataclass
class FakeAudit:
    events: list[dict[str, Any]] = field(default_factory=list)

    async def record(
        self,
        event: str,
        outcome: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        details: Mapping[str, str | int | bool] | None = None,
    ) -> None:
        self.events.append(
            {"event": event, "outcome": outcome, "actor": actor, "subject": subject, "details": dict(details or {})}
        )

    def reasons(self, event: str = "auth.login") -> list[str]:
        return [str(e["details"].get("reason", e["outcome"])) for e in self.events if e["event"] == event]


class FakeLimiter:
    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.hits: dict[str, int] = {}

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        self.hits[bucket] = self.hits.get(bucket, 0) + 1
        cap = self.limit if self.limit is not None else limit
        return RateDecision(True, 0.0) if self.hits[bucket] <= cap else RateDecision(False, 12.3)


class FakeCaptcha:
    def __init__(self, enabled: bool = False, good_code: str = "424242") -> None:
        self.enabled = enabled
        self.good_code = good_code
        self.consumed: list[tuple[str, str, tuple[str, ...]]] = []

    async def consume(
        self, captcha_id: str, code: str, allowed_targets: Collection[str] = (), *, require_target: bool = False
    ) -> None:
        """``good_code`` is an image captcha; ``code@target`` is a code that was sent to ``target``."""
        if not captcha_id or not code:
            raise InvalidArgument("CAPTCHA_REQUIRED", "captcha required")
        answer, _, target = code.partition("@")
        sent_elsewhere = target and target not in allowed_targets
        if answer != self.good_code or sent_elsewhere or (require_target and not target):
            raise InvalidArgument("CAPTCHA_INVALID", "captcha invalid")
        self.consumed.append((captcha_id, code, tuple(allowed_targets)))


ED25519_KEY = Ed25519PrivateKey.generate()


@dataclass
class World:
    """A full set of use cases over fakes."""

    clock: Clock
    users: FakeUserRepo
    cipher: FakeCipher
    hasher: CountingHasher
    guard: FakeGuard
    sessions: FakeSessions
    audit: FakeAudit
    limiter: FakeLimiter
    captcha: FakeCaptcha
    signer: JwtSigner
    tokens: TokenUsecase
    auth: AuthUsecase
    totp: TotpUsecase
    profiles: UserUsecase
    lockout: Lockout

    def with_policy(self, **changes: Any) -> World:
        return replace(self, auth=_auth(self, AuthPolicy(**changes)))


def _auth(w: Any, policy: AuthPolicy) -> AuthUsecase:
    return AuthUsecase(w.users, w.cipher, w.hasher, w.captcha, w.limiter, w.lockout, w.tokens, w.audit, policy, w.clock)


def build_world(
    *,
    captcha_enabled: bool = False,
    free_attempts: int = 5,
    delay_seconds: float = 1.0,
    hard_lock_attempts: int = 20,
    lock_seconds: float = 600,
    signer: JwtSigner | None = None,
) -> World:
    clock = Clock()
    users, cipher, hasher = FakeUserRepo(), FakeCipher(), CountingHasher()
    guard, sessions, audit = FakeGuard(clock), FakeSessions(clock), FakeAudit()
    limiter, captcha = FakeLimiter(), FakeCaptcha(captcha_enabled)
    signer = signer or JwtSigner("EdDSA", ED25519_KEY, "authkms-test", "clients-test")
    tokens = TokenUsecase(signer, sessions, users, audit, TokenPolicy(), clock)
    lockout = Lockout(guard, LockoutPolicy(free_attempts, delay_seconds, 900.0, hard_lock_attempts, lock_seconds))
    w = World(
        clock,
        users,
        cipher,
        hasher,
        guard,
        sessions,
        audit,
        limiter,
        captcha,
        signer,
        tokens,
        None,  # type: ignore[arg-type]
        TotpUsecase(users, cipher, hasher, lockout, tokens, audit, "AuthKMS Test", clock),
        UserUsecase(users, cipher),
        lockout,
    )
    w.auth = _auth(w, AuthPolicy())
    return w


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
