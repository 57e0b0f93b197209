"""Service replicas for the topology suite: fresh databases, replica settings, credentials.

Server processes and the mixed client workload come from the hardening suite's helpers
(``tests.hardening.cluster`` / ``load``), so both suites drive the service the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from internal.data.migrate import migrate_up
from tests.hardening.cluster import Cluster, cli_popen, server_env


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server_url: str, prefix: str) -> str:
    """A fresh database on ``server_url``, migrated directly (never through a pooler); its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    asyncio.run(migrate_up(url))
    return url


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.strip("/")
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def replica_env(database_url: str, redis_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The hardening suite's replica settings plus ``settings`` (APP__ keys)."""
    env = server_env(database_url, redis_url, f"topo:{uuid.uuid4().hex[:8]}:", data_dir)
    env.update(settings)
    return env


def start_cluster(logs: Path, env: dict[str, str], replicas: int) -> Cluster:
    logs.mkdir(parents=True, exist_ok=True)
    group = Cluster(logs, env)
    try:
        group.start(replicas)
    except BaseException:
        group.stop()
        raise
    return group


def create_credential(env: dict[str, str], name: str) -> str:
    """A KMS credential with every scope, made with the CLI (so the CLI works on the topology too)."""
    proc = cli_popen(
        env, "credentials", "create", "--name", name, "--scopes", "kms.encrypt,kms.decrypt,kms.datakey,kms.admin"
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("akms_")
    return token
