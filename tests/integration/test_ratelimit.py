"""RedisRateLimiter against real Redis: limits, sliding window, atomicity, outage handling."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from internal.biz.errors import Unavailable
from internal.data.ratelimit import RedisRateLimiter
from tests.integration.helpers import closed_port_url


async def test_allows_up_to_limit_then_denies(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, redis_prefix)
    decisions = [await limiter.hit("login:1.2.3.4", 3, 60) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert all(d.retry_after == 0 for d in decisions[:3])
    assert 59 < decisions[3].retry_after <= 60
    assert (await limiter.hit("login:5.6.7.8", 3, 60)).allowed  # buckets are independent
    ttl = await redis_client.pttl(f"{redis_prefix}ratelimit:login:1.2.3.4")
    assert 0 < ttl <= 60_000


async def test_window_slides(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, redis_prefix)
    assert (await limiter.hit("b", 2, 0.3)).allowed
    await asyncio.sleep(0.15)
    assert (await limiter.hit("b", 2, 0.3)).allowed
    denied = await limiter.hit("b", 2, 0.3)
    assert not denied.allowed and 0 < denied.retry_after <= 0.16
    await asyncio.sleep(denied.retry_after + 0.02)
    assert (await limiter.hit("b", 2, 0.3)).allowed  # the first hit left the window
    assert not (await limiter.hit("b", 2, 0.3)).allowed  # the second one has not


async def test_concurrent_hits_never_exceed_limit(redis_url: str, redis_prefix: str) -> None:
    clients = [aioredis.from_url(redis_url) for _ in range(5)]
    try:
        limiters = [RedisRateLimiter(c, redis_prefix) for c in clients]
        decisions = await asyncio.gather(*(limiters[i % 5].hit("hot", 7, 60) for i in range(60)))
        assert sum(d.allowed for d in decisions) == 7
    finally:
        await clients[0].delete(f"{redis_prefix}ratelimit:hot")
        for c in clients:
            await c.aclose()


async def test_invalid_arguments(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, redis_prefix)
    with pytest.raises(ValueError):
        await limiter.hit("x", 0, 60)
    with pytest.raises(ValueError):
        await limiter.hit("x", 1, 0)


async def test_redis_down_is_unavailable() -> None:
    client = aioredis.from_url(closed_port_url(), socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        with pytest.raises(Unavailable) as err:
            await RedisRateLimiter(client, "x:").hit("b", 1, 1)
        assert err.value.reason == "SERVICE_UNAVAILABLE"
    finally:
        await client.aclose()
