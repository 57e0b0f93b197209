"""Login failure counters and locks in Redis (implements ``internal.biz.lockout.LoginGuard``).

They live only in Redis: they are short-lived by nature, and each expires ``lock_duration`` after the
last attempt that touched it (the counting rules are in ``internal.biz.lockout``).
"""

from __future__ import annotations

import time
from typing import Any

from internal.biz.lockout import AttemptDecision, AttemptKey, LockoutPolicy, LockState
from internal.data.data import wait_for_replicas
from internal.data.errors import translate_driver_errors

# Login counters (see internal.biz.lockout). KEYS: [1] source hash {n, last}, [2] account failures,
# [3] account lock. All three share the account's hash tag, so one script sees them in Redis Cluster.
# ARGV: free attempts, base delay ms, max delay ms, window ms.
# Returns {allowed (0/1), retry after ms, lock ttl ms}. The attempt is counted BEFORE the credential
# check, so of N parallel attempts past the free ones only the first runs; the others must wait.
_BEGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
local free = tonumber(ARGV[1])
if n >= free then
  local wait = math.min(tonumber(ARGV[2]) * 2 ^ math.min(n - free, 40), tonumber(ARGV[3]))
  if now < last + wait then return {0, last + wait - now, 0} end
end
redis.call('HSET', KEYS[1], 'n', n + 1, 'last', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('INCR', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
local lock = redis.call('PTTL', KEYS[3])
if lock < 0 then lock = 0 end
return {1, 0, lock}
"""

# After a failed check. KEYS: [1] account failures, [2] account lock; ARGV: hard limit, lock ms.
# Returns the lock ttl (ms) when this failure locked the account, else 0.
_FAILED = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return tonumber(ARGV[2])
"""

# KEYS: [1] source hash, [2] account failures.
_GIVE_BACK = """
if tonumber(redis.call('HGET', KEYS[1], 'n') or '0') > 0 then redis.call('HINCRBY', KEYS[1], 'n', -1) end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 0
"""


class RedisLoginGuard:
    """Implements ``internal.biz.lockout.LoginGuard`` with atomic Lua scripts.

    Counters expire ``lock_duration`` after the last attempt that touched them. Redis being down fails
    closed (SERVICE_UNAVAILABLE): a login must not run without its brute-force budget.
    """

    def __init__(self, redis: Any, key_prefix: str = "") -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._begin = redis.register_script(_BEGIN)
        self._failed = redis.register_script(_FAILED)
        self._give_back = redis.register_script(_GIVE_BACK)

    def _account_keys(self, account: str) -> list[str]:
        base = f"{self._prefix}login:{{{account}}}"
        return [f"{base}:failures", f"{base}:lock"]

    def _source_key(self, key: AttemptKey) -> str:
        return f"{self._prefix}login:{{{key.account}}}:source:{key.source}"

    @translate_driver_errors
    async def begin_attempt(self, key: AttemptKey, policy: LockoutPolicy) -> AttemptDecision:
        keys = [self._source_key(key), *self._account_keys(key.account)]
        delays = [_ms(policy.delay_seconds), _ms(policy.max_delay_seconds)]
        allowed, retry_ms, lock_ms = await self._begin(
            keys=keys, args=[policy.free_attempts, *delays, _ms(policy.lock_seconds)]
        )
        await wait_for_replicas(self._redis, "login attempts")
        locked_until = time.time() + int(lock_ms) / 1000 if int(lock_ms) > 0 else 0.0
        return AttemptDecision(bool(allowed), int(retry_ms) / 1000, locked_until)

    @translate_driver_errors
    async def record_failure(self, account: str, policy: LockoutPolicy) -> float:
        args = [policy.hard_lock_attempts, _ms(policy.lock_seconds)]
        ttl_ms = int(await self._failed(keys=self._account_keys(account), args=args))
        await wait_for_replicas(self._redis, "login attempts")
        return time.time() + ttl_ms / 1000 if ttl_ms > 0 else 0.0

    @translate_driver_errors
    async def give_back(self, key: AttemptKey) -> None:
        await self._give_back(keys=[self._source_key(key), self._account_keys(key.account)[0]])

    @translate_driver_errors
    async def succeeded(self, key: AttemptKey) -> None:
        await self._redis.delete(self._source_key(key), self._account_keys(key.account)[0])

    @translate_driver_errors
    async def lock(self, account: str, seconds: float) -> float:
        await self._redis.set(self._account_keys(account)[1], "1", px=_ms(seconds))
        return time.time() + seconds

    @translate_driver_errors
    async def unlock(self, account: str) -> None:
        await self._redis.delete(*self._account_keys(account))

    @translate_driver_errors
    async def status(self, account: str) -> LockState:
        failures_key, lock_key = self._account_keys(account)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(failures_key)
            pipe.pttl(lock_key)
            failures, ttl_ms = await pipe.execute()
        locked = int(ttl_ms) > 0
        return LockState(
            locked=locked,
            unlock_at=time.time() + int(ttl_ms) / 1000 if locked else 0.0,
            failed_attempts=int(failures or 0),
        )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
