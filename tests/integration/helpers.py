"""Plain helpers shared by integration test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import secrets
import socket
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from internal.biz import pii
from internal.biz.captcha import CaptchaSettings, CaptchaUsecase, CodeSenders
from internal.data.captcha import ImageCaptchaRenderer, RedisCaptchaStore
from internal.data.ratelimit import RedisRateLimiter
from internal.data.senders import DevOutboxSender
from tests.unit.kms.stack import KmsStack, user_values

CAPTCHA_KEY = secrets.token_bytes(32)


def closed_port_url() -> str:
    """A Redis URL on a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


class RecordingRenderer(ImageCaptchaRenderer):
    """The real renderer, remembering the last code so a test can answer like a human would."""

    last_code = ""

    def render(self, code: str) -> bytes:
        self.last_code = code
        return super().render(code)


class CaptchaEnv:
    """The real captcha use case on Redis (store, limiter, dev outbox), rendering with a RecordingRenderer."""

    def __init__(self, redis: aioredis.Redis, prefix: str, settings: CaptchaSettings) -> None:
        self.redis = redis
        self.prefix = prefix
        self.store = RedisCaptchaStore(redis, prefix)
        self.outbox = DevOutboxSender(redis, prefix, settings.expiration, security_mode="development")
        self.renderer = RecordingRenderer()
        self.usecase = CaptchaUsecase(
            settings,
            self.store,
            self.renderer,
            CodeSenders(email=self.outbox, sms=self.outbox),
            RedisRateLimiter(redis, prefix),
            CAPTCHA_KEY,
        )

    async def last_code(self, target: str) -> str:
        return (await self.outbox.codes(target))[0]

    async def stored(self, captcha_id: str) -> dict[Any, Any]:
        return dict(await self.redis.hgetall(self.store.key(captcha_id)))


async def insert_user(db: asyncpg.Pool, kms: KmsStack, i: int) -> int:
    """A users row written the way the auth use cases write it (ciphertexts under the users' key, bound to the
    row id)."""
    user_id = int(await db.fetchval("SELECT nextval('users_id_seq')"))
    context = pii.user_context(user_id)
    ciphertexts: dict[str, bytes | None] = {}
    versions = []
    for field, value in user_values(i).items():
        ciphertexts[field] = None
        if value is not None:
            sealed = await kms.users.encrypt(field, value, context)
            ciphertexts[field] = sealed.ciphertext
            versions.append(sealed.key_version)
    await db.execute(
        """
        INSERT INTO users (id, username, password, email_encrypted, email_hash, phone_encrypted,
                           name_encrypted, totp_secret_encrypted, pii_key_version)
        VALUES ($1, $2, 'x', $3, $4, $5, $6, $7, $8)
        """,
        user_id,
        f"user{i}",
        ciphertexts[pii.EMAIL],
        kms.users.blind_index(pii.EMAIL, f"user{i}@example.com"),
        ciphertexts[pii.PHONE],
        ciphertexts[pii.NAME],
        ciphertexts[pii.TOTP_SECRET],
        min(versions),
    )
    return user_id
