"""Connections shared by every repository (Kratos' data.go): the asyncpg pool and the Redis client.

Both are dependency-injector ``Resource`` generators, so the container opens them at start and closes
them on shutdown. Multi-host PostgreSQL DSNs (``postgresql://h1,h2/db?target_session_attrs=read-write``)
are handled by asyncpg itself; Redis accepts plain, TLS, unix-socket, Sentinel and Cluster URLs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from internal.conf.config import Database, Redis

log = logging.getLogger(__name__)

DB_QUERIES = Counter("db_queries_total", "Statements sent to PostgreSQL", ["outcome"])


def _count_query(record: Any) -> None:
    DB_QUERIES.labels("error" if record.exception else "ok").inc()


async def _instrument(conn: asyncpg.Connection) -> None:
    # Counting statements is how the benchmark proves steady-state Encrypt calls touch no database.
    conn.add_query_logger(_count_query)


async def pg_pool_resource(conf: Database) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        conf.url,
        min_size=conf.min_pool_size,
        max_size=conf.max_pool_size,
        timeout=conf.connect_timeout.total_seconds(),
        server_settings={"statement_timeout": str(int(conf.statement_timeout.total_seconds() * 1000))},
        init=_instrument,
    )
    log.info("postgres pool open", extra={"min_size": conf.min_pool_size, "max_size": conf.max_pool_size})
    try:
        yield pool
    finally:
        await pool.close()
        log.info("postgres pool closed")


def create_redis(conf: Redis) -> Any:
    """A redis.asyncio client for a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL."""
    timeout = conf.socket_timeout.total_seconds()
    parts = urlsplit(conf.url)
    if parts.scheme == "redis+sentinel":
        # redis+sentinel://host:port,host:port/service_name[/db]
        hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in parts.netloc.split(",")]
        service, _, db = parts.path.strip("/").partition("/")
        password = parse_qs(parts.query).get("password", [None])[0]
        sentinel = Sentinel(hosts, socket_timeout=timeout, password=password)
        return sentinel.master_for(service, db=int(db or 0), socket_timeout=timeout, password=password)
    if parts.scheme == "redis+cluster":
        return RedisCluster.from_url(
            conf.url.replace("redis+cluster://", "redis://", 1), socket_timeout=timeout
        )
    return aioredis.from_url(conf.url, socket_timeout=timeout, socket_connect_timeout=timeout)


async def redis_resource(conf: Redis) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(conf)
    try:
        yield client
    finally:
        await client.aclose()
