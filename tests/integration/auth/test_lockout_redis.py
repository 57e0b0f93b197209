"""Login lock counters in real Redis: atomic before the check, shared by replicas, expiring."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import DomainError
from internal.biz.token import Caller
from tests.integration.auth.conftest import Stack, build_stack, unique

PASSWORD = "s3cretpass"


async def test_twenty_parallel_wrong_passwords_run_at_most_five_argon2_checks(stack: Stack) -> None:
    username = unique()
    user_id = await stack.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    stack.hasher.verifications = 0
    results = await asyncio.gather(
        *(stack.auth.login(LoginAttempt(username, "wrongpass1")) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, DomainError) for r in results)
    reasons = [r.reason for r in results if isinstance(r, DomainError)]
    # The five checked attempts fail after the refused ones set the lock, so they may report it too.
    assert set(reasons) <= {"INVALID_CREDENTIALS", "ACCOUNT_LOCKED"} and "ACCOUNT_LOCKED" in reasons
    assert stack.hasher.verifications <= 5
    status = await stack.auth.lock_status(Caller(user_id=user_id), username)
    assert status.locked and status.failed_attempts == 5 and status.max_attempts == 5
    assert status.unlock_time - time.time() > 590
    # The right password does not help while locked, and runs no check.
    again = await asyncio.gather(stack.auth.login(LoginAttempt(username, PASSWORD)), return_exceptions=True)
    assert getattr(again[0], "reason", "") == "ACCOUNT_LOCKED" and stack.hasher.verifications <= 5


async def test_replicas_share_the_counter(pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str) -> None:
    a = build_stack(pg_pool, redis_client, redis_prefix, max_attempts=4)
    b = build_stack(pg_pool, redis_client, redis_prefix, max_attempts=4, cipher=a.cipher)
    username = unique()
    await a.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    reasons = []
    for replica in (a, b, a, b, a):
        try:
            await replica.auth.login(LoginAttempt(username, "wrongpass1"))
        except DomainError as exc:
            reasons.append(exc.reason)
    assert reasons == ["INVALID_CREDENTIALS"] * 3 + ["ACCOUNT_LOCKED"] * 2


async def test_lock_expires_and_success_resets(pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str) -> None:
    s = build_stack(pg_pool, redis_client, redis_prefix, max_attempts=2, lock_seconds=0.5)
    username = unique()
    user_id = await s.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    for _ in range(2):
        with contextlib.suppress(DomainError):
            await s.auth.login(LoginAttempt(username, "wrongpass1"))
    assert (await s.auth.lock_status(Caller(user_id=user_id), username)).locked
    await asyncio.sleep(0.6)
    await s.auth.login(LoginAttempt(username, PASSWORD))
    status = await s.auth.lock_status(Caller(user_id=user_id), username)
    assert (status.locked, status.failed_attempts) == (False, 0)


async def test_unknown_users_are_counted_too_and_redis_holds_no_identifier(stack: Stack) -> None:
    email = f"{unique('ghost')}@example.com"
    reasons = []
    for _ in range(6):
        try:
            await stack.auth.login(LoginAttempt(email, "wrongpass1"))
        except DomainError as exc:
            reasons.append(exc.reason)
    assert reasons == ["INVALID_CREDENTIALS"] * 4 + ["ACCOUNT_LOCKED"] * 2
    keys = [k.decode() async for k in stack.redis.scan_iter(match=f"{stack.prefix}*")]
    assert keys and not any(email.split("@")[0] in k for k in keys)
