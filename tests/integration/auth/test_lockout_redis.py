"""Login failure counters in real Redis: atomic before the check, per source and per account, shared by replicas."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.captcha import CaptchaSettings
from internal.biz.errors import DomainError
from internal.biz.ports import Caller
from tests.integration.auth.conftest import Stack, build_stack, unique
from tests.integration.helpers import CaptchaEnv

PASSWORD = "s3cretpass"
ATTACKERS = ("198.51.100.", "198.51.101.", "2001:db8:bad:1::")


async def reason(call: Any) -> str:
    try:
        await call
    except DomainError as exc:
        return exc.reason
    return "OK"


async def test_owner_signs_in_with_a_captcha_from_their_network_while_an_attacker_hammers(
    pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str
) -> None:
    """The review's scenario: an attacker from three other networks, with a solved captcha on every try,
    hammers the account; the owner, from their usual network with the right password and a captcha, gets in."""
    settings = CaptchaSettings(image_limit_per_client=10_000)
    captchas = CaptchaEnv(redis_client, redis_prefix, settings)
    s = build_stack(pg_pool, redis_client, redis_prefix, captcha=captchas.usecase, free_attempts=5, delay_seconds=2)
    username = unique()
    await build_stack(pg_pool, redis_client, redis_prefix, cipher=s.cipher).auth.register(
        Registration(username, PASSWORD, f"{unique()}@example.com")
    )

    async def attempt(password: str, client: str) -> str:
        challenge = await captchas.usecase.issue("image", "", client)
        code = captchas.renderer.last_code
        return await reason(s.auth.login(LoginAttempt(username, password, challenge.captcha_id, code), client))

    s.hasher.verifications = 0
    outcomes = [await attempt(f"guess-{i}-pass", ATTACKERS[i % 3] + str(i % 200 + 1)) for i in range(60)]
    assert set(outcomes) == {"INVALID_CREDENTIALS", "RATE_LIMITED"}
    assert outcomes.count("INVALID_CREDENTIALS") <= 3 * 5 + 3  # the free attempts per network, then delays
    assert await attempt(PASSWORD, "203.0.113.25") == "OK"
    # Without a captcha even the owner is turned away (captchas are on): the captcha is what
    # costs the attacker, the delay is what stops them.
    assert await reason(s.auth.login(LoginAttempt(username, PASSWORD), "203.0.113.25")) == "CAPTCHA_REQUIRED"


async def test_twenty_parallel_wrong_passwords_run_at_most_the_free_checks(stack: Stack) -> None:
    username = unique()
    user_id = await stack.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    stack.hasher.verifications = 0
    results = await asyncio.gather(
        *(stack.auth.login(LoginAttempt(username, "wrongpass1"), "198.51.100.7") for _ in range(20)),
        return_exceptions=True,
    )
    reasons = sorted(r.reason for r in results if isinstance(r, DomainError))
    assert len(reasons) == 20 and set(reasons) == {"INVALID_CREDENTIALS", "RATE_LIMITED"}
    assert stack.hasher.verifications <= 5
    status = await stack.auth.lock_status(Caller(user_id=user_id), username)
    assert not status.locked and status.failed_attempts == 5 and status.max_attempts == 100


async def test_delay_grows_per_source_and_other_networks_are_free(
    pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str
) -> None:
    s = build_stack(pg_pool, redis_client, redis_prefix, free_attempts=2, delay_seconds=0.4)
    username = unique()
    await s.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    login = s.auth.login
    for _ in range(2):
        assert await reason(login(LoginAttempt(username, "wrongpass1"), "198.51.100.7")) == "INVALID_CREDENTIALS"
    assert await reason(login(LoginAttempt(username, PASSWORD), "198.51.100.99")) == "RATE_LIMITED"  # same /24
    await asyncio.sleep(0.45)
    assert await reason(login(LoginAttempt(username, "wrongpass1"), "198.51.100.7")) == "INVALID_CREDENTIALS"
    await asyncio.sleep(0.45)  # the next delay is 0.8 s
    assert await reason(login(LoginAttempt(username, PASSWORD), "198.51.100.7")) == "RATE_LIMITED"
    assert await reason(login(LoginAttempt(username, PASSWORD), "203.0.113.1")) == "OK"


async def test_replicas_share_the_counters(pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str) -> None:
    a = build_stack(pg_pool, redis_client, redis_prefix, free_attempts=3, delay_seconds=60)
    b = build_stack(pg_pool, redis_client, redis_prefix, free_attempts=3, delay_seconds=60, cipher=a.cipher)
    username = unique()
    await a.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    attempt = LoginAttempt(username, "wrongpass1")
    reasons = [await reason(replica.auth.login(attempt, "10.1.1.1")) for replica in (a, b, a, b, a)]
    assert reasons == ["INVALID_CREDENTIALS"] * 3 + ["RATE_LIMITED"] * 2


async def test_hard_lock_expires_and_success_resets(
    pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str
) -> None:
    s = build_stack(pg_pool, redis_client, redis_prefix, free_attempts=2, hard_lock_attempts=3, lock_seconds=0.6)
    username = unique()
    user_id = await s.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    for network in ("10.0.1.1", "10.0.2.1", "10.0.3.1"):
        with contextlib.suppress(DomainError):
            await s.auth.login(LoginAttempt(username, "wrongpass1"), network)
    status = await s.auth.lock_status(Caller(user_id=user_id), username)
    assert status.locked and status.unlock_time >= int(time.time())
    assert await reason(s.auth.login(LoginAttempt(username, "wrongpass1"), "10.0.4.1")) == "INVALID_CREDENTIALS"
    assert await reason(s.auth.login(LoginAttempt(username, PASSWORD), "10.0.4.1")) == "ACCOUNT_LOCKED"
    await asyncio.sleep(0.7)
    await s.auth.login(LoginAttempt(username, PASSWORD), "10.0.4.1")
    status = await s.auth.lock_status(Caller(user_id=user_id), username)
    assert (status.locked, status.failed_attempts) == (False, 0)


async def test_operator_lock_and_unlock(stack: Stack) -> None:
    username = unique()
    await stack.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    assert await stack.auth.lock(username, 60) > time.time() + 55
    assert await reason(stack.auth.login(LoginAttempt(username, PASSWORD))) == "ACCOUNT_LOCKED"
    await stack.auth.unlock(username)
    assert await reason(stack.auth.login(LoginAttempt(username, PASSWORD))) == "OK"


async def test_unknown_users_are_counted_too_and_redis_holds_no_identifier(stack: Stack) -> None:
    email = f"{unique('ghost')}@example.com"
    reasons = [await reason(stack.auth.login(LoginAttempt(email, "wrongpass1"), "10.2.2.2")) for _ in range(7)]
    assert reasons == ["INVALID_CREDENTIALS"] * 5 + ["RATE_LIMITED"] * 2
    keys = [k.decode() async for k in stack.redis.scan_iter(match=f"{stack.prefix}*")]
    assert keys and not any(email.split("@")[0] in k for k in keys)
