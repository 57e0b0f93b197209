"""Real server processes (`python cmd/server/main.py`) on ephemeral ports, for e2e tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


def introspection_credential(database_url: str) -> str:
    """A service credential with auth.introspect, stored the way the credentials command stores one."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)

    async def insert() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO service_credentials (id, name, token_hash, scopes) VALUES ($1, $2, $3, $4)",
                uuid.uuid4(),
                f"introspect-{uuid.uuid4().hex[:6]}",
                token_hash(token),
                ["auth.introspect"],
            )
        finally:
            await conn.close()

    asyncio.run(insert())
    return token
