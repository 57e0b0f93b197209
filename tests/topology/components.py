"""The production components the topology suite starts itself, from Debian's packages.

PostgreSQL 15 clusters (``initdb``, ``pg_basebackup``, ``pg_ctl promote``), PgBouncer, Redis with
Sentinel, a Redis Cluster and HAProxy: each on free ports under one temporary folder, each stopped by
the fixture that started it. PostgreSQL and PgBouncer refuse to run as root, so they run as the
``postgres`` user when the suite runs as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.harness import free_port

PG_BIN = Path(os.environ.get("TOPOLOGY_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEBIAN_PACKAGES = {
    "pgbouncer": "pgbouncer",
    "redis-sentinel": "redis-sentinel",
    "redis-server": "redis-server",
    "haproxy": "haproxy",
}


def missing_components() -> list[str]:
    """Debian packages (and the PostgreSQL server binaries) this machine lacks."""
    missing = [package for binary, package in DEBIAN_PACKAGES.items() if shutil.which(binary) is None]
    if not (PG_BIN / "pg_ctl").exists():
        missing.append(f"postgresql server binaries in {PG_BIN}")
    return missing


def _as_service_user() -> dict[str, object]:
    """Popen arguments that drop root to the postgres user (no wrapper process, so signals reach the server)."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _run(argv: list[str], timeout: float = 120) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", **_as_service_user())  # type: ignore[call-overload]
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.1) -> float:
    """Seconds until ``predicate()`` is true; AssertionError after ``timeout``."""
    began = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - began


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def topology_root(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    _own(base)
    return base


# ---- PostgreSQL ----------------------------------------------------------------------------------------


@dataclass
class PgNode:
    """One PostgreSQL 15 cluster in ``root/name`` on its own port."""

    root: Path
    name: str
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()

    @property
    def datadir(self) -> Path:
        return self.root / self.name

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def initdb(self) -> None:
        _run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n"
                "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
            )

    def basebackup_of(self, primary: PgNode, application_name: str) -> None:
        """A streaming standby of ``primary`` (standby.signal + primary_conninfo naming it)."""
        _run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(self.datadir),
                "-X",
                "stream",
                "--no-sync",
            ]
        )
        with (self.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
                f"application_name={application_name}'\n"
            )
        (self.datadir / "standby.signal").touch()
        _own(self.datadir / "standby.signal")

    def start(self) -> None:
        options = " ".join([f"-p {self.port}", *(f"-c {o}" for o in self.extra)])
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.root / f"{self.name}.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            _run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"])

    def promote(self) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "promote"])

    def psql(self, query: str, database: str = "postgres") -> str:
        return _run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-c",
                query,
            ]
        ).strip()


# ---- PgBouncer -----------------------------------------------------------------------------------------


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode in front of one PostgreSQL server."""

    root: Path
    server_host: str
    server_port: int
    pool_size: int = 4
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def ini(self) -> Path:
        return self.root / "pgbouncer.ini"

    def start(self) -> None:
        users = self.root / "pgbouncer-users.txt"
        users.write_text('"postgres" ""\n')
        self.ini.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            "server_reset_query = DISCARD ALL\n"
            "server_check_delay = 1\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
        )
        for path in (users, self.ini):
            _own(path)
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            ["pgbouncer", str(self.ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd="/",
            **_as_service_user(),
        )
        wait_until(lambda: port_open(self.port), 20, "pgbouncer listening")

    def version(self) -> str:
        return package_version("pgbouncer")

    def admin(self, command: str) -> list[dict[str, str]]:
        """Rows of an admin console command (it speaks the simple query protocol only, hence psql)."""
        out = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "pgbouncer",
                "-A",
                "-F",
                "\t",
                "-P",
                "footer=off",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        header, *rows = [line.split("\t") for line in out.splitlines() if line]
        return [dict(zip(header, row, strict=False)) for row in rows]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def package_version(binary: str, flag: str = "--version") -> str:
    out = subprocess.run([binary, flag], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).strip().splitlines()[0]


# ---- Redis, Sentinel, Cluster --------------------------------------------------------------------------


def redis_command(port: int, *args: str, timeout: float = 5) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
    )
    return done.stdout.strip()


@dataclass
class RedisNode:
    """A redis-server (or redis-sentinel) child on its own port, without persistence."""

    root: Path
    name: str
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    binary: str = "redis-server"
    proc: subprocess.Popen[bytes] | None = None
    config: str = ""

    def start(self, timeout: float = 20) -> None:
        workdir = self.root / self.name
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [self.binary]
        if self.config:
            conf = workdir / f"{self.name}.conf"  # Sentinel rewrites its file: a fresh copy per start
            conf.write_text(self.config)
            argv.append(str(conf))
        argv += [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / f"{self.name}.log"),
            *self.args,
        ]
        if self.binary == "redis-server":
            argv += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: redis_command(self.port, "PING") == "PONG", timeout, f"{self.name} answering")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@dataclass
class SentinelGroup:
    """A master, one replica and three sentinels (quorum 2) watching ``service``."""

    root: Path
    service: str = "authkms"
    down_after_ms: int = 1000
    nodes: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> None:
        master = RedisNode(self.root, "redis-a")
        master.start()
        replica = RedisNode(self.root, "redis-b", ("--replicaof", "127.0.0.1", str(master.port)))
        replica.start()
        self.nodes = [master, replica]
        for i in range(3):
            config = (
                f"sentinel monitor {self.service} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            sentinel = RedisNode(self.root, f"sentinel-{i}", binary="redis-sentinel", config=config)
            sentinel.start()
            self.sentinels.append(sentinel)
        wait_until(lambda: self.master_port() == master.port and self._in_sync(), 30, "replica in sync")
        wait_until(
            lambda: all(
                redis_command(s.port, "SENTINEL", "CKQUORUM", self.service).startswith("OK 3") for s in self.sentinels
            ),
            30,
            "sentinels agreeing",
        )

    def _in_sync(self) -> bool:
        info = redis_command(self.nodes[0].port, "INFO", "replication")
        return "connected_slaves:1" in info and "state=online" in info

    def master_port(self) -> int:
        """The master port the sentinels currently name (0 when none answers)."""
        for sentinel in self.sentinels:
            reply = redis_command(sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service).split()
            if len(reply) == 2:
                return int(reply[1])
        return 0

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()


# ---- HAProxy -------------------------------------------------------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name_index: int, value: str) -> bytes:
    # HPACK "literal header field without indexing" with an indexed name (4-bit prefix), no Huffman.
    raw = value.encode()
    assert len(raw) < 127
    prefix = bytes([name_index]) if name_index < 15 else bytes([15, name_index - 15])
    return prefix + bytes([len(raw)]) + raw


def grpc_health_check_hex(service: str) -> str:
    """One grpc.health.v1.Health/Check call for ``service`` as raw HTTP/2 (preface, SETTINGS, HEADERS, DATA):
    the ``tcp-check send-binary`` payload. HAProxy 2.6's http-check cannot send a body holding NUL bytes,
    and every gRPC message starts with one."""
    headers = (
        bytes([0x83, 0x86])  # :method POST, :scheme http (static table)
        + _literal(4, "/grpc.health.v1.Health/Check")  # :path
        + _literal(1, "haproxy-check")  # :authority
        + _literal(31, "application/grpc")  # content-type
        + b"\x00\x02te\x08trailers"  # te: trailers (a new name)
    )
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    message = b"\x00" + len(request).to_bytes(4, "big") + request
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(0x4, 0, 0, b"")  # SETTINGS
        + _frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS
        + _frame(0x0, 0x1, 1, message)  # DATA, END_STREAM
    ).hex()


# The reply message HealthCheckResponse{status: SERVING} in its gRPC frame: 5 bytes of prefix, then 08 01.
SERVING_REPLY_HEX = "00000000020801"
ROUTED_SERVICES = {"auth": "auth.v1.Auth", "kms": "kms.v1.KMS", "any": ""}
# A backend no call is routed to, checked on a service the replicas do not have: it must stay DOWN,
# which shows the check reads the gRPC answer rather than a TCP connect.
PROBE_BACKEND = ("probe", "authkms.v1.Missing")


def haproxy_config(port: int, stats_socket: Path, servers: list[str], inter_ms: int = 500) -> str:
    """gRPC (HTTP/2 end to end) in front of ``servers``: one backend per service, each with a gRPC health
    check on that service name; calls are routed by their path (/auth.v1.Auth/…, /kms.v1.KMS/…, the rest)."""
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout check 1s",
        "    retries 2",
        "    retry-on conn-failure",
        "    option redispatch 1",
        "frontend grpc",
        f"    bind 127.0.0.1:{port} proto h2",
        "    use_backend auth if { path_beg /auth.v1.Auth/ }",
        "    use_backend kms if { path_beg /kms.v1.KMS/ }",
        "    default_backend any",
    ]
    for backend, service in [*ROUTED_SERVICES.items(), PROBE_BACKEND]:
        lines += [
            f"backend {backend}",
            "    balance roundrobin",
            "    option tcp-check",
            f"    tcp-check send-binary {grpc_health_check_hex(service)}",
            f"    tcp-check expect binary {SERVING_REPLY_HEX}",
        ]
        lines += [
            f"    server r{i} {target} proto h2 check inter {inter_ms} fall 1 rise 1"
            for i, target in enumerate(servers)
        ]
    return "\n".join(lines) + "\n"


@dataclass
class HAProxy:
    root: Path
    servers: list[str]
    inter_ms: int = 500
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stats_socket(self) -> Path:
        return self.root / "haproxy.sock"

    def start(self) -> None:
        conf = self.root / "haproxy.cfg"
        conf.write_text(haproxy_config(self.port, self.stats_socket, self.servers, self.inter_ms))
        log = (self.root / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: port_open(self.port), 20, "haproxy listening")

    def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> UP/DOWN/… from the stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = data.decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        states = {}
        for line in rows[1:]:
            if not line:
                continue
            row = dict(zip(header, line.split(","), strict=False))
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                states[(row["pxname"], row["svname"])] = row["status"]
        return states

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class RedisClusterGroup:
    """Three Redis Cluster masters (no replicas), slots spread by ``redis-cli --cluster create``."""

    root: Path
    nodes: list[RedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for i in range(3):
            port = free_port()
            while port > 55535 or not _free(port + 10000):  # the cluster bus listens on port + 10000
                port = free_port()
            node = RedisNode(
                self.root,
                f"cluster-{i}",
                (
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(self.root / f"cluster-{i}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "3000",
                ),
                port=port,
            )
            node.start()
            self.nodes.append(node)
        done = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(
            lambda: all("cluster_state:ok" in redis_command(n.port, "CLUSTER", "INFO") for n in self.nodes),
            30,
            "cluster state ok",
        )

    def keys_per_node(self) -> list[int]:
        return [int(redis_command(n.port, "DBSIZE") or 0) for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
