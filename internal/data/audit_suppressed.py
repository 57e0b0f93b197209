"""Counts of refused calls left out of the audit trail, per client network, in Redis (implements
``internal.biz.audit.SuppressedDenials``). A count lives a day after its last increment."""

from __future__ import annotations

from typing import Any

from internal.data.errors import translate_driver_errors

_TTL_SECONDS = 86_400


class RedisSuppressedDenials:
    def __init__(self, redis: Any, key_prefix: str = "") -> None:
        self._redis = redis
        self._prefix = key_prefix

    def _key(self, network: str) -> str:
        return f"{self._prefix}audit-denied-suppressed:{network}"

    @translate_driver_errors
    async def add(self, network: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._key(network))
            pipe.expire(self._key(network), _TTL_SECONDS)
            await pipe.execute()

    @translate_driver_errors
    async def take(self, network: str) -> int:
        return int(await self._redis.getdel(self._key(network)) or 0)
