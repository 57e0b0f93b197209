"""Refresh families and revocation in real PostgreSQL + Redis: rotation, reuse, logout, flush safety."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import Unauthenticated
from internal.biz.ports import Caller
from internal.biz.token import TokenPair, hash_refresh_token
from internal.data.session import PgSessionRepo
from tests.integration.auth.conftest import Stack, unique

PASSWORD = "s3cretpass"


async def login(stack: Stack) -> TokenPair:
    username = unique()
    await stack.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    return await stack.auth.login(LoginAttempt(username, PASSWORD))


async def reason(coro: Any) -> str:
    with pytest.raises(Unauthenticated) as err:
        await coro
    return err.value.reason


async def flush_prefix(stack: Stack) -> None:
    """The FLUSHALL equivalent for this test's keys (the shared Redis is never flushed)."""
    keys = [k async for k in stack.redis.scan_iter(match=f"{stack.prefix}*")]
    if keys:
        await stack.redis.delete(*keys)


async def test_refresh_tokens_are_stored_hashed_and_rotate(stack: Stack) -> None:
    first = await login(stack)
    row = await stack.pool.fetchrow(
        "SELECT * FROM refresh_tokens WHERE token_hash = $1", hash_refresh_token(first.refresh_token)
    )
    assert row is not None and row["used_at"] is None
    assert (
        await stack.pool.fetchval("SELECT count(*) FROM refresh_tokens WHERE token_hash = $1", first.refresh_token) == 0
    )
    second = await stack.tokens.refresh(first.refresh_token)
    assert (await stack.tokens.authenticate(second.access_token)).session_id == str(row["family_id"])
    used = await stack.pool.fetchval(
        "SELECT used_at FROM refresh_tokens WHERE token_hash = $1", hash_refresh_token(first.refresh_token)
    )
    assert used is not None


async def test_reuse_revokes_the_family_durably(stack: Stack) -> None:
    first = await login(stack)
    second = await stack.tokens.refresh(first.refresh_token)
    assert await reason(stack.tokens.refresh(first.refresh_token)) == "REFRESH_TOKEN_REUSED"
    assert await reason(stack.tokens.refresh(second.refresh_token)) == "TOKEN_REVOKED"
    assert await reason(stack.tokens.authenticate(second.access_token)) == "TOKEN_REVOKED"
    introspector = Caller(scopes=frozenset({"auth.introspect"}))
    assert not (await stack.tokens.introspect(introspector, second.access_token)).active
    sid = jwt.decode(second.access_token, options={"verify_signature": False})["sid"]
    row = await stack.pool.fetchrow(
        "SELECT revoked_at, revoke_reason FROM refresh_token_families WHERE id = $1::uuid", sid
    )
    assert row is not None and row["revoked_at"] is not None and row["revoke_reason"] == "reuse"
    await flush_prefix(stack)
    assert await reason(stack.tokens.authenticate(second.access_token)) == "TOKEN_REVOKED"


async def test_concurrent_use_of_one_refresh_token_one_wins_and_the_family_dies(stack: Stack) -> None:
    pair = await login(stack)
    results = await asyncio.gather(
        *(stack.tokens.refresh(pair.refresh_token) for _ in range(5)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, TokenPair)]
    assert len(winners) == 1
    assert {r.reason for r in results if isinstance(r, Unauthenticated)} == {"REFRESH_TOKEN_REUSED"}
    assert await reason(stack.tokens.authenticate(winners[0].access_token)) == "TOKEN_REVOKED"


async def test_logout_survives_a_redis_flush_and_other_replicas(
    stack: Stack, pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str
) -> None:
    pair = await login(stack)
    caller = await stack.tokens.authenticate(pair.access_token)  # warms an "active" cache entry
    await stack.tokens.logout(caller)
    assert await reason(stack.tokens.authenticate(pair.access_token)) == "TOKEN_REVOKED"
    assert await stack.pool.fetchval("SELECT count(*) FROM revoked_access_tokens WHERE jti = $1", caller.token_id) == 1
    await flush_prefix(stack)
    assert await reason(stack.tokens.authenticate(pair.access_token)) == "TOKEN_REVOKED"
    assert await reason(stack.tokens.refresh(pair.refresh_token)) == "TOKEN_REVOKED"
    # A replica with no cache at all (its own prefix) asks PostgreSQL and agrees.
    other = PgSessionRepo(pg_pool, redis_client, redis_prefix + "other:")
    assert await other.is_revoked(caller.token_id, caller.session_id)


async def test_active_cache_entries_never_hide_a_later_revocation(stack: Stack) -> None:
    pair = await login(stack)
    caller = await stack.tokens.authenticate(pair.access_token)
    keys = [k.decode() async for k in stack.redis.scan_iter(match=f"{stack.prefix}revoked:*")]
    assert len(keys) == 2 and [await stack.redis.get(k) for k in keys] == [b"0", b"0"]
    assert 0 < await stack.redis.pttl(keys[0]) <= 5000
    # Revoke from "another replica" that shares Redis: the SET overwrites the cached "active".
    await stack.sessions.revoke_family(caller.session_id, "logout")
    assert await reason(stack.tokens.authenticate(pair.access_token)) == "TOKEN_REVOKED"


async def test_redis_outage_falls_back_to_postgres(stack: Stack, pg_pool: asyncpg.Pool) -> None:
    pair = await login(stack)
    caller = await stack.tokens.authenticate(pair.access_token)
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        offline = PgSessionRepo(pg_pool, dead, stack.prefix)
        assert not await offline.is_revoked(caller.token_id, caller.session_id)
        await offline.revoke_family(caller.session_id, "logout")  # durable even without Redis
        assert await offline.is_revoked(caller.token_id, caller.session_id)
    finally:
        await dead.aclose()
    # The warm "active" entry written before the outage expires within active_cache_ttl (5 s here).
    await stack.redis.delete(*[k async for k in stack.redis.scan_iter(match=f"{stack.prefix}revoked:*")])
    assert await reason(stack.tokens.authenticate(pair.access_token)) == "TOKEN_REVOKED"


async def test_refresh_family_absolute_lifetime_in_sql(stack: Stack) -> None:
    pair = await login(stack)
    sid = jwt.decode(pair.access_token, options={"verify_signature": False})["sid"]
    await stack.pool.execute(
        "UPDATE refresh_token_families SET expires_at = now() - interval '1 s' WHERE id = $1::uuid", sid
    )
    assert await reason(stack.tokens.refresh(pair.refresh_token)) == "TOKEN_EXPIRED"
    used = await stack.pool.fetchval(
        "SELECT used_at FROM refresh_tokens WHERE token_hash = $1", hash_refresh_token(pair.refresh_token)
    )
    assert used is None  # refused before it was consumed


async def test_revocation_check_cost(stack: Stack) -> None:
    """Measures warm (Redis MGET) vs cold (plus one PostgreSQL query) revocation checks."""
    pair = await login(stack)
    caller = await stack.tokens.authenticate(pair.access_token)
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        assert not await stack.sessions.is_revoked(caller.token_id, caller.session_id)
    warm = (time.perf_counter() - t0) / n
    keys = [f"{stack.prefix}revoked:jti:{caller.token_id}", f"{stack.prefix}revoked:sid:{caller.session_id}"]
    cold = 0.0
    for _ in range(n):
        await stack.redis.delete(*keys)
        t0 = time.perf_counter()
        assert not await stack.sessions.is_revoked(caller.token_id, caller.session_id)
        cold += time.perf_counter() - t0
    cold /= n
    print(f"revocation check: warm {warm * 1000:.3f} ms, cold {cold * 1000:.3f} ms")
    assert warm < 0.05 and cold < 0.1


async def family_of(stack: Stack, pair: TokenPair) -> Any:
    return await stack.pool.fetchval(
        "SELECT family_id FROM refresh_tokens WHERE token_hash = $1", hash_refresh_token(pair.refresh_token)
    )


async def test_purge_forgets_only_what_nothing_can_present(stack: Stack) -> None:
    """Expired over an hour ago: gone (a family with its tokens). Expired just now, or live: kept, since JWT
    verification allows clock leeway and a deny-list row must outlive the token it denies."""
    old, recent, live = await login(stack), await login(stack), await login(stack)
    for pair, age in ((old, "2 hours"), (recent, "1 minute")):
        await stack.pool.execute(
            f"UPDATE refresh_token_families SET expires_at = now() - interval '{age}' WHERE id = $1",
            await family_of(stack, pair),
        )
    tag = unique("jti")
    await stack.pool.execute(
        """INSERT INTO revoked_access_tokens (jti, expires_at) VALUES
           ($1 || '-old', now() - interval '2 hours'), ($1 || '-recent', now() - interval '1 minute'),
           ($1 || '-live', now() + interval '1 hour')""",
        tag,
    )
    old_family = await family_of(stack, old)
    assert await stack.tokens.purge_expired() >= 2
    assert await stack.pool.fetchval("SELECT count(*) FROM refresh_token_families WHERE id = $1", old_family) == 0
    assert await stack.pool.fetchval("SELECT count(*) FROM refresh_tokens WHERE family_id = $1", old_family) == 0
    assert await family_of(stack, recent) is not None
    denied = await stack.pool.fetch("SELECT jti FROM revoked_access_tokens WHERE jti LIKE $1 || '%'", tag)
    assert sorted(r["jti"] for r in denied) == [f"{tag}-live", f"{tag}-recent"]
    assert await reason(stack.tokens.refresh(old.refresh_token)) == "TOKEN_INVALID"
    await stack.tokens.refresh(live.refresh_token)  # untouched sessions keep working


async def test_purge_works_in_batches(stack: Stack) -> None:
    tag = unique("batch")
    await stack.pool.execute(
        """INSERT INTO revoked_access_tokens (jti, expires_at)
           SELECT $1 || '-' || i, now() - interval '3 hours' FROM generate_series(1, 7) AS i""",
        tag,
    )
    assert await stack.sessions.purge_expired(timedelta(hours=1), batch=3) >= 7
    assert await stack.pool.fetchval("SELECT count(*) FROM revoked_access_tokens WHERE jti LIKE $1 || '%'", tag) == 0
