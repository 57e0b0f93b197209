"""Redis-backed rate limiting shared by every replica (captcha sends, login throttling, …).

A sliding-window log: each allowed hit is one sorted-set member scored by the Redis server clock, so
the limit holds over *any* window-long interval (a fixed window lets twice the limit through around
a boundary) and replicas with skewed clocks agree. Denied hits are not recorded, so a throttled
client gets through again once its oldest allowed hit leaves the window. Memory per bucket is at most
``limit`` members: meant for limits up to a few thousand.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import exceptions as redis_errors

from internal.biz.errors import Unavailable
from internal.biz.ports import RateDecision

# KEYS[1] bucket; ARGV: limit, window (µs), unique member. Returns {allowed (0/1), retry_after (µs)}.
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


@contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Turn Redis connectivity failures into the domain's Unavailable(SERVICE_UNAVAILABLE)."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError) as exc:
        raise Unavailable("SERVICE_UNAVAILABLE", f"{what} is temporarily unavailable") from exc


class RedisRateLimiter:
    """Implements ``internal.biz.ports.RateLimiter``; keys are ``{key_prefix}ratelimit:{bucket}``."""

    def __init__(self, redis: Any, key_prefix: str = "") -> None:
        self._prefix = key_prefix
        self._hit = redis.register_script(_HIT)

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("limit must be ≥ 1 and window_seconds > 0")
        window_us = max(1, round(window_seconds * 1_000_000))
        with redis_unavailable("rate limiting"):
            allowed, retry_us = await self._hit(
                keys=[f"{self._prefix}ratelimit:{bucket}"],
                args=[limit, window_us, secrets.token_hex(8)],
            )
        if allowed:
            return RateDecision(allowed=True, retry_after=0.0)
        return RateDecision(allowed=False, retry_after=max(int(retry_us), 0) / 1_000_000)
