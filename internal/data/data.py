"""Connections shared by every repository (Kratos' data.go): the asyncpg pool and the Redis client.

Both are dependency-injector ``Resource`` generators, so the container opens them at start and closes
them on shutdown. Multi-host PostgreSQL DSNs (``postgresql://h1,h2/db?target_session_attrs=read-write``)
are handled by asyncpg itself; Redis accepts plain, TLS, unix-socket, Sentinel and Cluster URLs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from internal.biz.errors import Unavailable
from internal.conf.config import Database, Redis
from internal.data.ratelimit import redis_unavailable

log = logging.getLogger(__name__)

DB_QUERIES = Counter("db_queries_total", "Statements sent to PostgreSQL", ["outcome"])


def _count_query(record: Any) -> None:
    DB_QUERIES.labels("error" if record.exception else "ok").inc()


async def _instrument(conn: asyncpg.Connection) -> None:
    # Counting statements is how the benchmark proves steady-state Encrypt calls touch no database.
    conn.add_query_logger(_count_query)


async def _no_reset(conn: asyncpg.Connection) -> None:
    # Behind a transaction pooler no session state is ever set, and a reset query would only run on
    # whichever server connection the pooler lends next.
    return None


class PoolerConnection(asyncpg.Connection):  # type: ignore[misc]
    """Statement names unique across processes.

    Even with the statement cache off, asyncpg names the statements of type introspection and
    ``prepare()`` from a per-process counter, so two replicas both create ``__asyncpg_stmt_1__`` and
    collide on a server connection the pooler shares ("prepared statement ... already exists").
    """

    def _get_unique_id(self, prefix: str) -> str:
        return f"__asyncpg_{prefix}_{uuid.uuid4().hex}__"


def pool_options(conf: Database) -> dict[str, Any]:
    """asyncpg options for a direct connection or for one through a transaction-mode pooler."""
    if conf.pooler == "transaction":
        # Named prepared statements live on one server connection, which the pooler hands to another
        # client after each transaction ("prepared statement does not exist"): unnamed ones only.
        # PgBouncer refuses unknown startup parameters, so statement_timeout is the client's timeout
        # (asyncpg cancels the statement through the pooler when it passes).
        return {
            "statement_cache_size": 0,
            "connection_class": PoolerConnection,
            "command_timeout": conf.statement_timeout.total_seconds(),
            "reset": _no_reset,
        }
    return {"server_settings": {"statement_timeout": str(int(conf.statement_timeout.total_seconds() * 1000))}}


async def pg_pool_resource(conf: Database) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        conf.url,
        min_size=conf.min_pool_size,
        max_size=conf.max_pool_size,
        timeout=conf.connect_timeout.total_seconds(),
        init=_instrument,
        **pool_options(conf),
    )
    log.info(
        "postgres pool open",
        extra={"min_size": conf.min_pool_size, "max_size": conf.max_pool_size, "pooler": conf.pooler},
    )
    try:
        yield pool
    finally:
        await pool.close()
        log.info("postgres pool closed")


REPLICA_ACKS = "_authkms_replica_acks"


class _ReplicaAcks:
    """``data.redis.replica_acks`` of one client, with the master's connected-replica count (≤ 1 s old)."""

    def __init__(self, wanted: int, timeout_ms: int) -> None:
        self.wanted = wanted
        self.timeout_ms = timeout_ms
        self.connected = wanted
        self.checked_at = 0.0

    async def refresh(self, client: Any, force: bool = False) -> int:
        now = time.monotonic()
        if force or now - self.checked_at > 1.0:
            self.connected = int((await client.info("replication")).get("connected_slaves", 0))
            self.checked_at = now
        return self.connected


def create_redis(conf: Redis) -> Any:
    """A redis.asyncio client for a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL."""
    timeout = conf.socket_timeout.total_seconds()
    parts = urlsplit(conf.url)
    client: Any
    if parts.scheme == "redis+sentinel":
        # redis+sentinel://host:port,host:port/service_name[/db]
        hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in parts.netloc.split(",")]
        service, _, db = parts.path.strip("/").partition("/")
        password = parse_qs(parts.query).get("password", [None])[0]
        sentinel = Sentinel(
            hosts,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            password=password,
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
        client = sentinel.master_for(service, db=int(db or 0), socket_timeout=timeout, password=password)
    elif parts.scheme == "redis+cluster":
        client = RedisCluster.from_url(
            conf.url.replace("redis+cluster://", "redis://", 1),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    else:
        client = aioredis.from_url(conf.url, socket_timeout=timeout, socket_connect_timeout=timeout)
    # WAIT blocks at most a quarter of the socket timeout, so it answers before the socket gives up.
    setattr(client, REPLICA_ACKS, _ReplicaAcks(conf.replica_acks, max(1, int(timeout * 250))))
    return client


async def wait_for_replicas(client: Any, what: str) -> None:
    """After a write a failover must not undo: wait until ``data.redis.replica_acks`` replicas have it.

    While fewer replicas are connected (one is down), every connected one must have it: a failover can only
    promote a replica. Fewer acknowledgements answer Unavailable: the write may be on the master alone, so
    it is not acknowledged to the client (whose retry meets the state the write left behind)."""
    acks: _ReplicaAcks | None = getattr(client, REPLICA_ACKS, None)
    if acks is None or not acks.wanted:
        return
    with redis_unavailable(what):
        wanted = min(acks.wanted, await acks.refresh(client))
        if not wanted:
            return
        acked = int(await client.wait(wanted, acks.timeout_ms))
        if acked >= wanted or acked >= await acks.refresh(client, force=True):
            return
    log.warning("redis write not replicated in time", extra={"acked": acked, "wanted": wanted})
    raise Unavailable("SERVICE_UNAVAILABLE", f"{what} is temporarily unavailable")


async def redis_resource(conf: Redis) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(conf)
    if isinstance(client, RedisCluster):
        # Learn the slot map now: pub/sub (key events) looks a channel's slot up before any command ran.
        await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()
