"""Builds a ``KMSManager`` from configuration: the one place the app container calls."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import redis.asyncio as aioredis

from internal.conf.config import Kms, read_secret
from internal.pkg.kms.audit import AuditSink, NoopAuditSink
from internal.pkg.kms.audit_pg import PgAuditSink
from internal.pkg.kms.events import KeyEvents, NoopKeyEvents, RedisKeyEvents, channel_name
from internal.pkg.kms.manager import KMSManager
from internal.pkg.kms.storage import KeyStorage
from internal.pkg.kms.storage_file import FileKeyStorage
from internal.pkg.kms.storage_pg import PgKeyStorage
from internal.pkg.kms.targets import ReencryptionTarget


def build_kms(
    config: Kms,
    pool: asyncpg.Pool | None,
    redis: aioredis.Redis | None,
    key_prefix: str = "",
    targets: Sequence[ReencryptionTarget] = (),
    *,
    audit: AuditSink | None = None,
    destroy_grace: timedelta | None = None,
) -> KMSManager:
    """An uninitialized manager: ``await manager.initialize()`` at start-up, ``await manager.close()`` at exit.

    Storage: ``database`` needs ``pool``; ``file`` uses ``config.storage_path``. Events: Redis pub/sub on
    ``<key_prefix>kms:key-events`` when ``redis`` is given (with file storage too: replicas on one host
    can share a file). Audit: ``audit_events`` when a pool is given.
    """
    storage: KeyStorage
    if config.storage_type == "database":
        if pool is None:
            raise ValueError("kms.storage_type=database needs a PostgreSQL pool")
        storage = PgKeyStorage(pool)
    else:
        storage = FileKeyStorage(config.storage_path)
    events: KeyEvents = RedisKeyEvents(redis, channel_name(key_prefix)) if redis is not None else NoopKeyEvents()
    default_sink: AuditSink = PgAuditSink(pool) if pool is not None else NoopAuditSink()
    sink = audit if audit is not None else default_sink
    return KMSManager(
        config,
        storage,
        seed=read_secret(config.seed, config.seed_file),
        salt=read_secret(config.salt, config.salt_file),
        events=events,
        audit_sink=sink,
        targets=targets,
        destroy_grace=destroy_grace,
    )
