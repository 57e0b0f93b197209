"""Sessions: refresh-token families and revocations (PostgreSQL, cached in Redis) and login lock counters.

Revocation cache (docs/security.md item 14). PostgreSQL is the truth; Redis holds two kinds of entries per
access token (``jti``) and per session (``sid``, the refresh family):

* ``"1"`` (revoked) — written with a plain SET right after the PostgreSQL commit; revocation is
  permanent, so such an entry can never be wrong;
* ``"0"`` (active) — written only with ``SET NX`` and a short TTL (``active_cache_ttl``) after
  PostgreSQL said "not revoked". NX means it can never overwrite a revocation that landed meanwhile.

A missing entry always means "ask PostgreSQL", so a Redis FLUSHALL or restart only costs one indexed
lookup per token and can never revive a revoked one. The one residual window: if Redis is unreachable
exactly while a revocation is written, an earlier ``"0"`` entry may answer "active" for at most
``active_cache_ttl``. Measured locally (tests/integration/auth/test_sessions_pg.py): warm, a check is
one round trip (two pipelined GETs, ~0.2 ms); cold, it adds one indexed PostgreSQL query and a pipelined
SET (~1.5 ms), paid once per token per ``active_cache_ttl``.

Login failure counters and locks are not here: ``internal.data.login_guard``.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from redis import exceptions as redis_errors

from internal.biz.token import Rotation, RotationResult
from internal.data.data import wait_for_replicas
from internal.data.errors import translate_driver_errors

log = logging.getLogger(__name__)

_REVOKED = b"1"
_ACTIVE = b"0"
_CACHE_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError, OSError)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class PgSessionRepo:
    """Implements ``internal.biz.token.SessionRepo``.

    ``revoked_cache_ttl`` should be at least the access-token lifetime (a revoked session's entry is
    useful as long as any of its access tokens can still be presented).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Any,
        key_prefix: str = "",
        *,
        active_cache_ttl: timedelta = timedelta(seconds=5),
        revoked_cache_ttl: timedelta = timedelta(minutes=15),
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._prefix = key_prefix
        self._active_ttl_ms = max(1, int(active_cache_ttl.total_seconds() * 1000))
        self._revoked_ttl_ms = max(1, int(revoked_cache_ttl.total_seconds() * 1000))

    def _jti_key(self, jti: str) -> str:
        return f"{self._prefix}revoked:jti:{jti}"

    def _sid_key(self, family_id: str) -> str:
        return f"{self._prefix}revoked:sid:{family_id}"

    @translate_driver_errors
    async def start_family(
        self,
        family_id: str,
        user_id: int,
        family_ttl: timedelta,
        token_hash: str,
        token_ttl: timedelta,
        client_addr: str = "",
        user_agent: str = "",
    ) -> None:
        # One statement (one round trip, one commit): the family and its first token, or neither.
        await self._pool.execute(
            """
            WITH family AS (
                INSERT INTO refresh_token_families (id, user_id, expires_at, client_addr, user_agent)
                VALUES ($1, $2, now() + $3::interval, NULLIF($6, ''), NULLIF($7, '')) RETURNING id, expires_at
            )
            INSERT INTO refresh_tokens (token_hash, family_id, expires_at)
            SELECT $4, id, LEAST(now() + $5::interval, expires_at) FROM family
            """,
            uuid.UUID(family_id),
            user_id,
            family_ttl,
            token_hash,
            token_ttl,
            client_addr[:64],
            user_agent[:256],
        )

    @translate_driver_errors
    async def rotate_refresh_token(
        self, old_hash: str, new_hash: str, token_ttl: timedelta, client_addr: str = ""
    ) -> RotationResult:
        async with self._pool.acquire() as conn, conn.transaction():
            # The durable single-use check: of two concurrent uses exactly one UPDATE matches (the
            # other re-evaluates the row after the first commits and finds used_at set).
            row = await conn.fetchrow(
                """
                UPDATE refresh_tokens t SET used_at = now()
                  FROM refresh_token_families f
                 WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > now()
                   AND f.id = t.family_id AND f.revoked_at IS NULL AND f.expires_at > now()
                RETURNING f.id, f.user_id, f.expires_at
                """,
                old_hash,
            )
            if row is not None:
                await conn.execute(
                    """
                    INSERT INTO refresh_tokens (token_hash, family_id, expires_at)
                    VALUES ($1, $2, LEAST(now() + $3::interval, $4))
                    """,
                    new_hash,
                    row["id"],
                    token_ttl,
                    row["expires_at"],
                )
                await conn.execute(
                    """
                    UPDATE refresh_token_families
                       SET last_used_at = now(), client_addr = COALESCE(NULLIF($2, ''), client_addr)
                     WHERE id = $1
                    """,
                    row["id"],
                    client_addr[:64],
                )
                return RotationResult(Rotation.ROTATED, str(row["id"]), row["user_id"])
            state = await conn.fetchrow(
                """
                SELECT t.used_at, f.id, f.user_id, f.revoked_at
                  FROM refresh_tokens t JOIN refresh_token_families f ON f.id = t.family_id
                 WHERE t.token_hash = $1
                """,
                old_hash,
            )
        if state is None:
            return RotationResult(Rotation.UNKNOWN)
        if state["used_at"] is not None:
            outcome = Rotation.REUSED
        elif state["revoked_at"] is not None:
            outcome = Rotation.REVOKED
        else:
            outcome = Rotation.EXPIRED
        return RotationResult(outcome, str(state["id"]), state["user_id"])

    @translate_driver_errors
    async def revoke_family(self, family_id: str, reason: str) -> None:
        family = _uuid(family_id)
        if family is None:
            return
        await self._pool.execute(
            """
            UPDATE refresh_token_families SET revoked_at = now(), revoke_reason = $2
             WHERE id = $1 AND revoked_at IS NULL
            """,
            family,
            reason[:32],
        )
        await self._cache_revoked(self._sid_key(family_id), self._revoked_ttl_ms)

    @translate_driver_errors
    async def revoke_user_families(self, user_id: int, keep_family_id: str, reason: str) -> int:
        rows = await self._pool.fetch(
            """
            UPDATE refresh_token_families SET revoked_at = now(), revoke_reason = $3
             WHERE user_id = $1 AND id IS DISTINCT FROM $2 AND revoked_at IS NULL AND expires_at > now()
            RETURNING id
            """,
            user_id,
            _uuid(keep_family_id),
            reason[:32],
        )
        for row in rows:
            await self._cache_revoked(self._sid_key(str(row["id"])), self._revoked_ttl_ms)
        return len(rows)

    @translate_driver_errors
    async def revoke_access_token(self, jti: str, expires_at: int) -> None:
        await self._pool.execute(
            """
            INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, to_timestamp($2))
            ON CONFLICT (jti) DO NOTHING
            """,
            jti[:64],
            float(expires_at),
        )
        remaining_ms = int((expires_at - time.time()) * 1000)
        await self._cache_revoked(self._jti_key(jti), max(remaining_ms, 1000))

    @translate_driver_errors
    async def is_revoked(self, jti: str, family_id: str) -> bool:
        family = _uuid(family_id)
        if family is None or len(jti) > 64:
            return True  # not a token we issued: fail closed
        keys = [self._jti_key(jti), self._sid_key(family_id)]
        cached = await self._cache_get(keys)
        if _REVOKED in cached:
            return True
        if all(value == _ACTIVE for value in cached):
            return False
        row = await self._pool.fetchrow(
            """
            SELECT EXISTS (SELECT 1 FROM revoked_access_tokens WHERE jti = $1) AS token_revoked,
                   NOT EXISTS (SELECT 1 FROM refresh_token_families WHERE id = $2 AND revoked_at IS NULL)
                       AS family_revoked
            """,
            jti,
            family,
        )
        assert row is not None  # EXISTS always yields one row
        await self._cache_fill(keys, [row["token_revoked"], row["family_revoked"]])
        return bool(row["token_revoked"] or row["family_revoked"])

    @translate_driver_errors
    async def purge_expired(self, grace: timedelta, batch: int = 5000) -> int:
        """Delete deny-list rows and families (with their tokens) that expired more than ``grace`` ago, in
        batches so no statement holds locks for long; returns rows deleted."""
        deleted = 0
        for table, key in (("revoked_access_tokens", "jti"), ("refresh_token_families", "id")):
            while True:
                status = await self._pool.execute(
                    f"""
                    DELETE FROM {table} WHERE {key} IN (
                        SELECT {key} FROM {table} WHERE expires_at < now() - $1::interval LIMIT $2
                    )
                    """,
                    grace,
                    batch,
                )
                count = int(status.split()[-1])
                deleted += count
                if count < batch:
                    break
        return deleted

    async def _cache_get(self, keys: list[str]) -> list[bytes | None]:
        try:
            # Not MGET: a jti and a sid key hash to different Redis Cluster slots.
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return list(await pipe.execute())
        except _CACHE_ERRORS:
            log.warning("revocation cache unavailable; asking PostgreSQL")
            return [None] * len(keys)

    async def _cache_fill(self, keys: list[str], revoked: list[bool]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, is_revoked in zip(keys, revoked, strict=True):
                    if is_revoked:
                        pipe.set(key, _REVOKED, px=self._revoked_ttl_ms)
                    else:
                        pipe.set(key, _ACTIVE, px=self._active_ttl_ms, nx=True)
                await pipe.execute()
        except _CACHE_ERRORS:
            log.warning("revocation cache unavailable; not caching")

    async def _cache_revoked(self, key: str, ttl_ms: int) -> None:
        try:
            await self._redis.set(key, _REVOKED, px=ttl_ms)
        except _CACHE_ERRORS:
            # PostgreSQL already holds the revocation; a stale "active" entry expires within
            # active_cache_ttl.
            log.warning("revocation cache unavailable; revocation stored durably only")
            return
        # A revocation a failover could drop would let a cached "active" entry answer for it again.
        await wait_for_replicas(self._redis, "the revocation cache")
