"""Captcha storage in Redis and image rendering (implements the ports of ``internal.biz.captcha``).

One hash per captcha, ``{prefix}captcha:{id}`` with fields ``code_hash``, ``type``, ``target`` (a keyed
digest, never the address) and ``attempts``, expiring after the captcha lifetime. Checks run as Lua
scripts, so compare, count and delete happen in one step on the Redis server: a code is single-use
across any number of replicas and concurrent wrong guesses cannot exceed the attempt limit. The
compared values are HMACs the attacker cannot choose, so Lua's string equality leaks nothing useful.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from captcha.image import ImageCaptcha

from internal.biz.captcha import IMAGE, CaptchaCheck, CaptchaRecord
from internal.data.data import wait_for_replicas
from internal.data.ratelimit import redis_unavailable

# KEYS[1] captcha; ARGV: code_hash, max_attempts.
_CHECK = """
local h = redis.call('HGET', KEYS[1], 'code_hash')
if not h then return 'unknown' end
if h == ARGV[1] then return 'ok' end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 'exhausted'
end
return 'mismatch'
"""

# KEYS[1] captcha; ARGV: code_hash, max_attempts, the type exempt from the target check ("" for none),
# allowed target digests...
_CONSUME = """
local rec = redis.call('HMGET', KEYS[1], 'code_hash', 'type', 'target')
if not rec[1] then return 'unknown' end
local failure = false
if rec[1] ~= ARGV[1] then
  failure = 'mismatch'
elseif rec[2] ~= ARGV[3] then
  failure = 'wrong_target'
  for i = 4, #ARGV do
    if ARGV[i] == rec[3] then
      failure = false
      break
    end
  end
end
if not failure then
  redis.call('DEL', KEYS[1])
  return 'ok'
end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 'exhausted'
end
return failure
"""


def _outcome(raw: bytes | str) -> CaptchaCheck:
    return CaptchaCheck(raw.decode() if isinstance(raw, bytes) else raw)


class RedisCaptchaStore:
    """Implements ``internal.biz.captcha.CaptchaStore``."""

    def __init__(self, redis: Any, key_prefix: str = "") -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._check = redis.register_script(_CHECK)
        self._consume = redis.register_script(_CONSUME)

    def key(self, captcha_id: str) -> str:
        return f"{self._prefix}captcha:{captcha_id}"

    async def save(self, captcha_id: str, record: CaptchaRecord, ttl: timedelta) -> None:
        key = self.key(captcha_id)
        fields = {
            "code_hash": record.code_hash,
            "type": record.captcha_type,
            "target": record.target,
            "attempts": 0,
        }
        with redis_unavailable("captcha storage"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, max(1, int(ttl.total_seconds() * 1000)))
                await pipe.execute()

    async def check(self, captcha_id: str, code_hash: str, max_attempts: int) -> CaptchaCheck:
        with redis_unavailable("captcha storage"):
            raw = await self._check(keys=[self.key(captcha_id)], args=[code_hash, max_attempts])
        await wait_for_replicas(self._redis, "captcha storage")
        return _outcome(raw)

    async def consume(
        self,
        captcha_id: str,
        code_hash: str,
        target_digests: Collection[str],
        max_attempts: int,
        require_target: bool = False,
    ) -> CaptchaCheck:
        exempt = "" if require_target else IMAGE
        with redis_unavailable("captcha storage"):
            raw = await self._consume(
                keys=[self.key(captcha_id)], args=[code_hash, max_attempts, exempt, *sorted(target_digests)]
            )
        await wait_for_replicas(self._redis, "captcha storage")
        return _outcome(raw)

    async def delete(self, captcha_id: str) -> None:
        with redis_unavailable("captcha storage"):
            await self._redis.delete(self.key(captcha_id))


class ImageCaptchaRenderer:
    """Implements ``internal.biz.captcha.CaptchaRenderer`` with the ``captcha`` library: PNG bytes."""

    def __init__(self, width: int = 160, height: int = 60) -> None:
        self._image = ImageCaptcha(width=width, height=height)
        # Load the fonts now: the lazy first load is not safe to race from several render threads.
        _ = self._image.truefonts

    def render(self, code: str) -> bytes:
        return self._image.generate(code, format="png").getvalue()
