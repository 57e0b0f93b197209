"""Password reset codes in Redis (implements ``internal.biz.account.ResetCodeStore``).

One hash per code, ``{prefix}reset:{id}`` with ``code_hash`` (a keyed HMAC, never the code), ``user`` (the
account id, 0 when no account has the address) and ``attempts``, expiring with the code. Checks run as Lua
scripts, so a code is single use across replicas and wrong guesses cannot exceed the attempt limit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from internal.biz.captcha import CaptchaCheck
from internal.data.ratelimit import redis_unavailable

# KEYS[1] code; ARGV: code_hash, max attempts. Returns {outcome, user id}.
_CHECK = """
local rec = redis.call('HMGET', KEYS[1], 'code_hash', 'user')
if not rec[1] then return {'unknown', '0'} end
if rec[1] == ARGV[1] then return {'ok', rec[2]} end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {'exhausted', '0'}
end
return {'mismatch', '0'}
"""

# KEYS[1] code; ARGV: code_hash. 1 for the one caller that deletes a still-matching code.
_CONSUME = """
if redis.call('HGET', KEYS[1], 'code_hash') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RedisResetCodeStore:
    def __init__(self, redis: Any, key_prefix: str = "") -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._check = redis.register_script(_CHECK)
        self._consume = redis.register_script(_CONSUME)

    def _key(self, reset_id: str) -> str:
        return f"{self._prefix}reset:{reset_id}"

    async def save(self, reset_id: str, code_hash: str, user_id: int, ttl: timedelta) -> None:
        key = self._key(reset_id)
        with redis_unavailable("password reset"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"code_hash": code_hash, "user": str(user_id), "attempts": 0})
                pipe.pexpire(key, max(1, int(ttl.total_seconds() * 1000)))
                await pipe.execute()

    async def check(self, reset_id: str, code_hash: str, max_attempts: int) -> tuple[CaptchaCheck, int]:
        with redis_unavailable("password reset"):
            outcome, user = await self._check(keys=[self._key(reset_id)], args=[code_hash, max_attempts])
        text = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        return CaptchaCheck(text), int(user)

    async def consume(self, reset_id: str, code_hash: str) -> bool:
        with redis_unavailable("password reset"):
            return bool(await self._consume(keys=[self._key(reset_id)], args=[code_hash]))
