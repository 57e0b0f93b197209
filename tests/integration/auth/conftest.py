"""The auth stack over real PostgreSQL and Redis, with a test-only AES-GCM FieldCipher."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from internal.biz import pii
from internal.biz.account import AccountPolicy, AccountUsecase
from internal.biz.auth import AuthPolicy, AuthUsecase
from internal.biz.captcha import CaptchaSettings, CodeSenders
from internal.biz.errors import InvalidArgument
from internal.biz.lockout import Lockout, LockoutPolicy
from internal.biz.password import Argon2Params, Argon2PasswordHasher
from internal.biz.token import TokenPolicy, TokenUsecase
from internal.biz.totp import TotpUsecase
from internal.biz.user import UserUsecase
from internal.data.account import PgAccountRepo
from internal.data.audit import PgAuditLog
from internal.data.login_guard import RedisLoginGuard
from internal.data.ratelimit import RedisRateLimiter
from internal.data.reset_codes import RedisResetCodeStore
from internal.data.senders import DevOutboxSender
from internal.data.session import PgSessionRepo
from internal.data.signing_keys import JwtSigner
from internal.data.user import PgUserRepo
from tests.unit.auth.fakes import ED25519_KEY


class AesGcmTestCipher:
    """Tests only: AES-256-GCM with field + context as associated data, HMAC blind indexes."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._index_key = os.urandom(32)

    @staticmethod
    def _ad(field: str, context: Mapping[str, str]) -> bytes:
        return json.dumps({"field": field, **context}, sort_keys=True).encode()

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> pii.Sealed:
        nonce = os.urandom(12)
        return pii.Sealed(b"\x01" + nonce + self._aead.encrypt(nonce, plaintext, self._ad(field, context)), 1)

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        try:
            return self._aead.decrypt(ciphertext[1:13], ciphertext[13:], self._ad(field, context))
        except Exception:
            raise InvalidArgument("CIPHERTEXT_INVALID", "ciphertext is invalid") from None

    def blind_index(self, field: str, value: str) -> str:
        normalized = value.strip().lower() if field == pii.EMAIL else value.strip()
        key = hmac.new(self._index_key, field.encode(), hashlib.sha256).digest()
        return hmac.new(key, normalized.encode(), hashlib.sha256).hexdigest()

    def lookup_hashes(self, field: str, value: str) -> list[str]:
        return [self.blind_index(field, value)]


class CountingArgon2(Argon2PasswordHasher):
    """The real Argon2id hasher, counting verifications (dummy ones included)."""

    def __init__(self) -> None:
        super().__init__(Argon2Params(memory_kib=19456, iterations=2, lanes=1))
        self.verifications = 0

    async def verify(self, password: str, encoded: str) -> bool:
        self.verifications += 1
        return await super().verify(password, encoded)


class DisabledCaptcha:
    enabled = False

    async def consume(
        self, captcha_id: str, code: str, allowed_targets: Collection[str] = (), *, require_target: bool = False
    ) -> None:
        raise AssertionError("captcha is disabled")


@dataclass
class Stack:
    pool: asyncpg.Pool
    redis: Any
    prefix: str
    users: PgUserRepo
    sessions: PgSessionRepo
    guard: RedisLoginGuard
    audit: PgAuditLog
    hasher: CountingArgon2
    cipher: AesGcmTestCipher
    tokens: TokenUsecase
    auth: AuthUsecase
    totp: TotpUsecase
    profiles: UserUsecase


def build_stack(
    pool: asyncpg.Pool,
    redis: Any,
    prefix: str,
    *,
    cipher: AesGcmTestCipher | None = None,
    free_attempts: int = 5,
    delay_seconds: float = 1.0,
    hard_lock_attempts: int = 100,
    lock_seconds: float = 600,
    captcha: Any = None,
    client_rate_limit: int = 1000,
) -> Stack:
    users, audit = PgUserRepo(pool), PgAuditLog(pool)
    sessions = PgSessionRepo(pool, redis, prefix)
    guard = RedisLoginGuard(redis, prefix)
    hasher, cipher = CountingArgon2(), cipher or AesGcmTestCipher()
    signer = JwtSigner("EdDSA", ED25519_KEY, "authkms-it", "clients-it")
    tokens = TokenUsecase(signer, sessions, users, audit, TokenPolicy())
    policy = LockoutPolicy(free_attempts, delay_seconds, 900.0, hard_lock_attempts, lock_seconds)
    lockout = Lockout(guard, policy)
    auth = AuthUsecase(
        users,
        cipher,
        hasher,
        captcha or DisabledCaptcha(),
        RedisRateLimiter(redis, prefix),
        lockout,
        tokens,
        audit,
        AuthPolicy(client_rate_limit=client_rate_limit),
    )
    totp = TotpUsecase(users, cipher, hasher, lockout, tokens, audit, "AuthKMS IT")
    return Stack(
        pool,
        redis,
        prefix,
        users,
        sessions,
        guard,
        audit,
        hasher,
        cipher,
        tokens,
        auth,
        totp,
        UserUsecase(users, cipher),
    )


def build_accounts(
    stack: Stack, *, captcha: Any = None, grace: timedelta = timedelta(days=30)
) -> tuple[AccountUsecase, DevOutboxSender]:
    """The account lifecycle use case over the stack's repositories; codes go to the development outbox."""
    outbox = DevOutboxSender(stack.redis, stack.prefix, timedelta(minutes=5), security_mode="development")
    usecase = AccountUsecase(
        users=stack.users,
        accounts=PgAccountRepo(stack.pool),
        sessions=stack.sessions,
        resets=RedisResetCodeStore(stack.redis, stack.prefix),
        cipher=stack.cipher,
        hasher=stack.hasher,
        lockout=Lockout(stack.guard, LockoutPolicy(free_attempts=10_000)),
        captcha=captcha or DisabledCaptcha(),
        senders=CodeSenders(email=outbox, sms=outbox),
        limiter=RedisRateLimiter(stack.redis, stack.prefix),
        audit=stack.audit,
        policy=AccountPolicy(
            codes=CaptchaSettings(send_limit_per_target=100, send_limit_per_client=100_000), deletion_grace=grace
        ),
        code_key=os.urandom(32),
    )
    return usecase, outbox


@pytest.fixture
def stack(pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str) -> Stack:
    return build_stack(pg_pool, redis_client, redis_prefix)


def unique(prefix: str = "u") -> str:
    """A username-shaped unique name (the database is shared by the whole run)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def unique_phone() -> str:
    # A random valid mainland-China mobile number (13x prefix).
    return f"+8613{int(uuid.uuid4().int % 10**9):09d}"
