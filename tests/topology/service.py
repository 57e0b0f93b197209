"""Service replicas for the topology suite: fresh databases, replica settings, credentials.

Server processes and the mixed client workload come from the hardening suite's helpers
(``tests.hardening.cluster`` / ``load``), so both suites drive the service the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
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
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"credentials create hung:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("akms_")
    return token


def kms_md(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def rotation_reaches_every_replica(targets: list[str], credential: str, timeout: float) -> tuple[int, float]:
    """Rotate on the first replica; seconds until every other replica encrypts under the new version."""
    md = kms_md(credential)
    with grpc.insecure_channel(targets[0]) as channel:
        reply = kms_pb2_grpc.KMSStub(channel).RotateDataKey(
            kms_pb2.RotateDataKeyRequest(reason="topology"), metadata=md, timeout=15
        )
    version, began = reply.key.version, time.monotonic()
    pending = list(targets[1:])
    while pending:
        assert time.monotonic() - began < timeout, f"{pending} still encrypt under an older version after {timeout}s"
        for target in list(pending):
            with grpc.insecure_channel(target) as channel, contextlib.suppress(grpc.RpcError):
                got = kms_pb2_grpc.KMSStub(channel).Encrypt(
                    kms_pb2.EncryptRequest(field="probe", plaintext=b"x"), metadata=md, timeout=5
                )
                if got.key_version == version:
                    pending.remove(target)
        time.sleep(0.02)
    return version, time.monotonic() - began


def register_user(target: str) -> tuple[str, str]:
    username, password = f"topo_{uuid.uuid4().hex[:10]}", "Pw" + uuid.uuid4().hex[:10] + "9"
    with grpc.insecure_channel(target) as channel:
        auth_pb2_grpc.AuthStub(channel).Register(
            auth_pb2.RegisterRequest(username=username, password=password, email=f"{username}@example.com"),
            timeout=30,
        )
    return username, password


def login_works(target: str, username: str, password: str) -> bool:
    """A login (PostgreSQL and Redis both needed) answered OK by ``target``."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = auth_pb2_grpc.AuthStub(channel).Login(
                auth_pb2.LoginRequest(username=username, password=password), timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(reply.access_token)
