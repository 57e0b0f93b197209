"""Captchas end to end over real Redis: the real store, limiter, renderer and dev outbox."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from PIL import Image

from internal.biz.captcha import (
    CaptchaCheck,
    CaptchaRecord,
    CaptchaSettings,
)
from internal.biz.errors import InvalidArgument, ResourceExhausted, Unavailable
from internal.data.captcha import RedisCaptchaStore
from tests.integration.helpers import CaptchaEnv, closed_port_url

PHONE = "+8613812345678"
EMAIL_ADDR = "jane@example.com"


@pytest.fixture
def env(redis_client: aioredis.Redis, redis_prefix: str) -> CaptchaEnv:
    return CaptchaEnv(redis_client, redis_prefix, CaptchaSettings(max_attempts=3))


async def test_image_captcha_is_a_real_png(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("image", "", "10.0.0.1")
    png = challenge.image_png
    assert png is not None and png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.format == "PNG" and image.size == (160, 60)


async def test_code_stored_hashed_with_ttl(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("email", EMAIL_ADDR, "10.0.0.1")
    code = await env.last_code(EMAIL_ADDR)
    stored = await env.stored(challenge.captcha_id)
    assert set(stored) == {b"code_hash", b"type", b"target", b"attempts"}
    assert stored[b"type"] == b"email" and stored[b"attempts"] == b"0"
    blob = b" ".join(stored.values())
    assert code.encode() not in blob and EMAIL_ADDR.encode() not in blob and b"jane" not in blob
    ttl = await env.redis.pttl(env.store.key(challenge.captcha_id))
    assert 290_000 < ttl <= 300_000
    outbox_ttl = await env.redis.pttl(env.outbox.key(EMAIL_ADDR))
    assert 290_000 < outbox_ttl <= 300_000


async def test_captcha_expires(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    env = CaptchaEnv(redis_client, redis_prefix, CaptchaSettings(expiration=timedelta(milliseconds=200)))
    challenge = await env.usecase.issue("sms", PHONE, "c")
    code = await env.last_code(PHONE)
    assert await env.usecase.verify(challenge.captcha_id, code)
    await asyncio.sleep(0.3)
    assert not await env.usecase.verify(challenge.captcha_id, code)
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, code, [PHONE])
    assert err.value.reason == "CAPTCHA_EXPIRED"


async def test_verify_does_not_consume_and_attempts_exhaust(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("sms", PHONE, "c")
    code = await env.last_code(PHONE)
    wrong = str((int(code) + 1) % 10**6).zfill(6)
    assert await env.usecase.verify(challenge.captcha_id, code)
    assert await env.usecase.verify(challenge.captcha_id, code)
    assert not await env.usecase.verify(challenge.captcha_id, wrong)
    assert not await env.usecase.verify(challenge.captcha_id, wrong)
    assert (await env.stored(challenge.captcha_id))[b"attempts"] == b"2"
    assert await env.usecase.verify(challenge.captcha_id, code)
    assert not await env.usecase.verify(challenge.captcha_id, wrong)  # third wrong: deleted
    assert await env.stored(challenge.captcha_id) == {}
    assert not await env.usecase.verify(challenge.captcha_id, code)


async def test_consume_single_use_and_errors(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("image", "", "c")
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, "")
    assert err.value.reason == "CAPTCHA_REQUIRED"
    code = env.renderer.last_code
    assert (await env.stored(challenge.captcha_id))[b"type"] == b"image"
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, "x" + code)
    assert err.value.reason == "CAPTCHA_INVALID"
    await env.usecase.consume(challenge.captcha_id, code, ["whoever@example.com"])
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, code)
    assert err.value.reason == "CAPTCHA_EXPIRED"


async def test_consume_attempts_exhaust(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("email", EMAIL_ADDR, "c")
    code = await env.last_code(EMAIL_ADDR)
    reasons = []
    for targets in (["jane@example.com"], ["other@example.com"], ["jane@example.com"]):
        with pytest.raises(InvalidArgument) as err:
            await env.usecase.consume(challenge.captcha_id, code if "other" in targets[0] else "x", targets)
        reasons.append(err.value.reason)
    assert reasons == ["CAPTCHA_INVALID"] * 3
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, code, [EMAIL_ADDR])
    assert err.value.reason == "CAPTCHA_EXPIRED"


async def test_target_binding(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("sms", PHONE, "c")
    code = await env.last_code(PHONE)
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, code, ["+14155552671", EMAIL_ADDR])
    assert err.value.reason == "CAPTCHA_INVALID"
    with pytest.raises(InvalidArgument):
        await env.usecase.consume(challenge.captcha_id, code)
    await env.usecase.consume(challenge.captcha_id, code, [EMAIL_ADDR, "+86 138 1234 5678"])


async def test_fifty_concurrent_consumers_exactly_one_wins(redis_url: str, redis_prefix: str) -> None:
    """Ten 'replicas' (own client, store and use case), five concurrent consumers each."""
    clients = [aioredis.from_url(redis_url) for _ in range(10)]
    try:
        envs = [CaptchaEnv(c, redis_prefix, CaptchaSettings(max_attempts=5)) for c in clients]
        challenge = await envs[0].usecase.issue("email", EMAIL_ADDR, "c")
        code = await envs[0].last_code(EMAIL_ADDR)

        async def attempt(i: int) -> str:
            try:
                await envs[i % 10].usecase.consume(challenge.captcha_id, code, [EMAIL_ADDR])
            except InvalidArgument as exc:
                return exc.reason
            return "OK"

        results = await asyncio.gather(*(attempt(i) for i in range(50)))
        assert results.count("OK") == 1
        assert set(results) == {"OK", "CAPTCHA_EXPIRED"}
    finally:
        keys = [k async for k in clients[0].scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await clients[0].delete(*keys)
        for c in clients:
            await c.aclose()


async def test_concurrent_wrong_guesses_bounded_by_attempts(env: CaptchaEnv) -> None:
    challenge = await env.usecase.issue("sms", PHONE, "c")
    code = await env.last_code(PHONE)
    guesses = [str(n).zfill(6) for n in range(40) if str(n).zfill(6) != code]
    await asyncio.gather(*(env.usecase.verify(challenge.captcha_id, g) for g in guesses))
    assert not await env.usecase.verify(challenge.captcha_id, code)  # gone after 3 wrong attempts


async def test_send_rate_limits_per_target_and_client(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    settings = CaptchaSettings(send_limit_per_target=2, send_limit_per_client=3, image_limit_per_client=2)
    env = CaptchaEnv(redis_client, redis_prefix, settings)
    await env.usecase.issue("sms", PHONE, "client-a")
    await env.usecase.issue("sms", PHONE, "client-b")
    with pytest.raises(ResourceExhausted) as err:
        await env.usecase.issue("sms", PHONE, "client-c")
    assert err.value.reason == "RATE_LIMITED"
    assert 3500 <= int(err.value.metadata["retry_after"]) <= 3600
    assert len(await env.outbox.codes(PHONE)) == 2

    await env.usecase.issue("email", "a@example.com", "client-d")
    await env.usecase.issue("email", "b@example.com", "client-d")
    await env.usecase.issue("email", "c@example.com", "client-d")
    with pytest.raises(ResourceExhausted):
        await env.usecase.issue("email", "d@example.com", "client-d")

    await env.usecase.issue("image", "", "client-e")
    await env.usecase.issue("image", "", "client-e")
    with pytest.raises(ResourceExhausted):
        await env.usecase.issue("image", "", "client-e")
    keys = [k.decode() async for k in redis_client.scan_iter(match=f"{redis_prefix}ratelimit:*")]
    assert keys and not any("@" in k or PHONE in k for k in keys)


async def test_store_outcomes_directly(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    store = RedisCaptchaStore(redis_client, redis_prefix)
    record = CaptchaRecord(code_hash="h" * 64, captcha_type="sms", target="t" * 64)
    await store.save("id-1", record, timedelta(seconds=30))
    assert await store.consume("id-1", "h" * 64, ["u" * 64], 5) is CaptchaCheck.WRONG_TARGET
    assert await store.check("id-1", "x" * 64, 5) is CaptchaCheck.MISMATCH
    assert await store.consume("id-1", "h" * 64, ["u" * 64, "t" * 64], 5) is CaptchaCheck.OK
    assert await store.check("id-1", "h" * 64, 5) is CaptchaCheck.UNKNOWN
    await store.save("id-2", record, timedelta(seconds=30))
    await store.delete("id-2")
    assert await store.consume("id-2", "h" * 64, ["t" * 64], 5) is CaptchaCheck.UNKNOWN


@pytest.fixture
async def down_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(closed_port_url(), socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        yield client
    finally:
        await client.aclose()


async def test_redis_down_is_unavailable(down_client: aioredis.Redis) -> None:
    env = CaptchaEnv(down_client, "x:", CaptchaSettings())
    store = env.store
    record = CaptchaRecord(code_hash="h", captcha_type="image", target="")
    calls = [
        env.usecase.issue("image", "", "c"),
        env.usecase.verify("a" * 32, "123456"),
        env.usecase.consume("a" * 32, "123456"),
        store.save("a" * 32, record, timedelta(seconds=1)),
        store.delete("a" * 32),
        env.outbox.send(PHONE, "123456", "verification"),
    ]
    for call in calls:
        with pytest.raises(Unavailable) as err:
            await call
        assert err.value.reason == "SERVICE_UNAVAILABLE"
        assert "123456" not in err.value.message
