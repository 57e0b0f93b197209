"""Where the benchmark's servers keep their state: a fresh database, a unique Redis key prefix, a data folder.

PostgreSQL: ``TEST_DATABASE_URL``, then ``DATABASE_URL``, then the local server on 127.0.0.1; the first
that answers gets a fresh ``bench_<id>`` database, dropped at the end. When none answers (and none was
configured explicitly) ``DATABASE_URL`` is left empty and the server starts its embedded PostgreSQL under
the run's data folder. Redis likewise (``TEST_REDIS_URL``, ``REDIS_URL``, local), with a unique key prefix
whose keys are deleted at the end.

Servers are started with ``tests.e2e.harness.start_server``; the one-off CLI commands (``migrate up``,
``credentials create``) run before any server starts, so that with embedded databases the CLI and the
server never own the data folder at the same time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from tests.e2e.harness import ROOT

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


class BenchError(Exception):
    """The benchmark could not run (as opposed to a goal being missed)."""


async def _postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def _redis_answers(url: str) -> bool:
    client = aioredis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


def _pick(explicit: list[tuple[str, str]], local: str, answers: Callable[[str], Coroutine[Any, Any, bool]]) -> str:
    """The first configured URL (it must answer), else the local one if it answers, else "" (embedded)."""
    for name, url in explicit:
        if url:
            if not asyncio.run(answers(url)):
                raise BenchError(f"{name} is set but does not answer ({urlsplit(url).hostname})")
            return url
    return local if asyncio.run(answers(local)) else ""


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@dataclass
class Backend:
    """The state shared by every server of one run."""

    run_id: str
    data_dir: Path
    postgres_server_url: str = ""  # "" → embedded PostgreSQL
    database_name: str = ""
    redis_url: str = ""  # "" → embedded Redis
    redis_prefix: str = ""
    server_env: dict[str, str] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return _with_database(self.postgres_server_url, self.database_name) if self.postgres_server_url else ""

    def describe(self) -> str:
        pg = "embedded"
        if self.postgres_server_url:
            pg = f"{urlsplit(self.postgres_server_url).hostname} db {self.database_name}"
        rd = "embedded"
        if self.redis_url:
            rd = f"{urlsplit(self.redis_url).hostname or self.redis_url} prefix {self.redis_prefix}"
        return f"postgres: {pg}; redis: {rd}"

    # ---- lifecycle ---------------------------------------------------------------------------------

    def open(self, extra_env: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.postgres_server_url = _pick(
            [("TEST_DATABASE_URL", os.environ.get("TEST_DATABASE_URL", "")),
             ("DATABASE_URL", os.environ.get("DATABASE_URL", ""))],
            LOCAL_DATABASE_URL,
            _postgres_answers,
        )
        self.redis_url = _pick(
            [("TEST_REDIS_URL", os.environ.get("TEST_REDIS_URL", "")), ("REDIS_URL", os.environ.get("REDIS_URL", ""))],
            LOCAL_REDIS_URL,
            _redis_answers,
        )
        self.redis_prefix = f"bench-{self.run_id}:"
        if self.postgres_server_url:
            self.database_name = f"bench_{self.run_id}"
            asyncio.run(self._admin(f'CREATE DATABASE "{self.database_name}"'))
        self.server_env = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "APP__DATA__REDIS__KEY_PREFIX": self.redis_prefix,
            "APP__DATA__DATA_DIR": str(self.data_dir),
            **extra_env,
        }

    def close(self) -> list[str]:
        """Drop the database, delete the Redis keys and the data folder; returns problems (never raises)."""
        problems: list[str] = []
        if self.database_name:
            try:
                asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)'))
            except Exception as exc:
                problems.append(f"could not drop database {self.database_name}: {exc}")
        if self.redis_url and self.redis_prefix:
            try:
                asyncio.run(self._delete_redis_keys())
            except Exception as exc:
                problems.append(f"could not delete Redis keys {self.redis_prefix}*: {exc}")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return problems

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.postgres_server_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _delete_redis_keys(self) -> None:
        client = aioredis.from_url(self.redis_url, socket_connect_timeout=2)
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=self.redis_prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.delete(*batch)
                    batch = []
            if batch:
                await client.delete(*batch)
        finally:
            await client.aclose()

    # ---- one-off CLI commands ----------------------------------------------------------------------

    def cli_env(self) -> dict[str, str]:
        """The environment a server of this run gets, for CLI commands (same rules as the harness)."""
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("APP__") and k not in ("DATABASE_URL", "REDIS_URL")
        }
        return {**inherited, "APP__KMS__ITERATIONS": "10000", **self.server_env}

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run ``cmd/server/main.py -conf configs <args>``; returns stdout, raises BenchError on failure."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "cmd" / "server" / "main.py"), "-conf", str(ROOT / "configs"), *args],
            cwd=ROOT,
            env={**self.cli_env(), "APP__MONITORING__LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise BenchError(f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def create_credential(self, name: str, scopes: str, keys: str = "default") -> str:
        out = self.cli("credentials", "create", "--name", name, "--scopes", scopes, "--keys", keys)
        token = out.strip().splitlines()[-1].strip() if out.strip() else ""
        if not token.startswith("akms_"):
            raise BenchError(f"credentials create printed no token: {out!r}")
        return token


def new_backend(extra_env: dict[str, str]) -> Backend:
    run_id = uuid.uuid4().hex[:10]
    backend = Backend(run_id=run_id, data_dir=ROOT / ".data" / f"bench-{run_id}")
    try:
        backend.open(extra_env)
    except BaseException:
        backend.close()
        raise
    return backend
