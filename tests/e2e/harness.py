"""Real server processes (`python cmd/server/main.py`) on ephemeral ports, for e2e tests and benchmarks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from internal.biz.credentials import TOKEN_PREFIX, token_hash

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE_CLIENT = Path(__file__).resolve().parent / "node_client"


def node_with_client_modules() -> str:
    """The ``node`` executable, with tests/e2e/node_client's locked npm packages installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "Node.js (>= 20) and npm are required for the Node client tests"
    wanted = ("@grpc/grpc-js", "jose")
    if not all((NODE_CLIENT / "node_modules" / name).is_dir() for name in wanted):
        cache = ROOT / ".data" / "npm-cache"
        cache.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--cache", str(cache)],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert install.returncode == 0, f"npm ci failed:\n{install.stdout}\n{install.stderr}"
    return node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def buf(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the third-party `buf` CLI (from buf-bin); its exit code is the gRPC code × 8."""
    executable = BIN / "buf"
    assert executable.exists(), "buf is not installed: pip install -e '.[test]'"
    return subprocess.run([str(executable), *args], capture_output=True, text=True, timeout=timeout)


def buf_curl(
    port: int, method: str, body: str = "{}", headers: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    args = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", body]
    for header in headers:
        args += ["-H", header]
    return buf(*args, f"http://127.0.0.1:{port}/{method}")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON log lines so far, parsed (lines that are not JSON, such as a traceback, are skipped)."""
        entries = []
        for line in self.logs().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def messages(self) -> list[str]:
        """The ``msg`` of every JSON log line so far."""
        return [str(entry.get("msg")) for entry in self.log_entries()]

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"server not SERVING within {timeout}s:\n{self.logs()[-4000:]}")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("server did not stop within its grace period after SIGTERM") from None
        return self.proc.returncode


def start_server(tmp_path: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> ServerProcess:
    grpc_port, http_port = free_port(), free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("APP__") and k not in ("DATABASE_URL", "REDIS_URL")},
        "APP__SERVER__GRPC__ADDR": f"127.0.0.1:{grpc_port}",
        "APP__SERVER__HTTP__ADDR": f"127.0.0.1:{http_port}",
        "APP__SERVER__GRPC__GRACE_PERIOD": "5s",
        "APP__KMS__ITERATIONS": "10000",
        "APP__MONITORING__LOG_FORMAT": "json",
        "APP__MONITORING__LOG_LEVEL": "DEBUG",
        **env,
    }
    log_path = tmp_path / f"server-{grpc_port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "cmd" / "server" / "main.py"), "-conf", str(ROOT / "configs"), *args],
            cwd=ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(proc, grpc_port, http_port, log_path, full_env)


@contextmanager
def running(tmp_path: Path, *envs: dict[str, str]) -> Iterator[list[ServerProcess]]:
    """Start one server per environment in parallel; terminate them all afterwards."""
    processes: list[ServerProcess] = []
    try:
        for env in envs:
            processes.append(start_server(tmp_path, env))
        for process in processes:
            process.wait_serving()
        yield processes
    finally:
        for process in processes:
            process.terminate()


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``cmd/server/main.py`` with ``args`` (a CLI command) in ``env``."""
    return subprocess.run(
        [sys.executable, "cmd/server/main.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def create_credential(env: dict[str, str], name: str, scopes: str) -> str:
    """A service credential made with ``credentials create``; its token."""
    result = cli(env, "credentials", "create", "--name", name, "--scopes", scopes)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("akms_")
    return token


def credential(env: dict[str, str], scopes: str, keys: str = "") -> str:
    """A new service credential from the CLI; ``keys`` empty: the default (``default`` only)."""
    args = ["credentials", "create", "--name", f"svc-{uuid.uuid4().hex[:10]}", "--scopes", scopes]
    result = cli(env, *args, *(["--keys", keys] if keys else []))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def stored_credential(database_url: str, *scopes: str) -> str:
    """A service credential with ``scopes``, stored the way the credentials command stores one."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)

    async def insert() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO service_credentials (id, name, token_hash, scopes) VALUES ($1, $2, $3, $4)",
                uuid.uuid4(),
                f"svc-{uuid.uuid4().hex[:8]}",
                token_hash(token),
                list(scopes),
            )
        finally:
            await conn.close()

    asyncio.run(insert())
    return token


def introspection_credential(database_url: str) -> str:
    """A service credential with auth.introspect."""
    return stored_credential(database_url, "auth.introspect")


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``token`` as a bearer credential."""
    return (("authorization", f"Bearer {token}"),)


def reason(err: grpc.RpcError) -> str:
    """The ``ErrorInfo.reason`` of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "error without google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def unique_account(tag: str) -> dict[str, str]:
    """A fresh username, password, lower-case email and E.164 (China mobile) phone."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "username": f"{tag}_{suffix}",
        "password": f"Pw{secrets.token_hex(8)}x9",
        "email": f"{tag}.{suffix}@example.com",
        "phone": f"+86138{random.randrange(10**8):08d}",
    }


def totp_code(secret_b32: str, step: int) -> str:
    """RFC 6238 / RFC 4226 (SHA-1, 6 digits), written here independently of the service."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return f"{(struct.unpack('>I', mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def query(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement, on a connection of its own."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())
