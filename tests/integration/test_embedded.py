"""Embedded PostgreSQL and Redis: real processes, real clients, and the failure modes seen in practice."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from internal.devenv.embedded import EmbeddedPostgres, EmbeddedRedis, FolderInUse

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval("select 1"))
    finally:
        await conn.close()


def _spawn_owner(code: str) -> subprocess.Popen[str]:
    """A separate Python process that starts a server, prints one line, then sleeps until killed."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def pg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cluster for the module (each test stops what it starts): initdb takes about a second."""
    return tmp_path_factory.mktemp("embedded-pg")


async def test_postgres_start_query_stop_leaves_no_process(pg_dir: Path) -> None:
    server = EmbeddedPostgres(pg_dir)
    dsn = server.start()
    try:
        assert dsn.startswith("postgresql://postgres@/postgres?host=")
        assert server.start() == dsn  # idempotent
        assert await _select_one(dsn) == 1
        postmaster = _postmaster_pid(pg_dir / "pgdata")
        backends = _children(postmaster)
        assert backends  # checkpointer, walwriter, ...
    finally:
        server.stop()
    server.stop()  # idempotent
    assert not _alive(postmaster)
    assert not any(_alive(pid) for pid in backends)
    assert not (pg_dir / "pgdata" / "postmaster.pid").exists()


async def test_postgres_warm_restart(pg_dir: Path) -> None:
    server = EmbeddedPostgres(pg_dir)
    began = time.monotonic()
    with server as dsn:
        assert time.monotonic() - began < 5
        assert await _select_one(dsn) == 1
    with server as dsn:
        assert await _select_one(dsn) == 1


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process (rather than pytest itself, so a bug cannot take the run down)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


async def test_postgres_stale_pid_file_never_kills_an_unrelated_process(
    pg_dir: Path, bystander: subprocess.Popen[bytes]
) -> None:
    # What a postmaster killed with SIGKILL leaves behind, once its pid has been reused.
    pgdata = pg_dir / "pgdata"
    (pgdata / "postmaster.pid").write_text(
        f"{bystander.pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  1 2\nready   \n"
    )
    with EmbeddedPostgres(pg_dir) as dsn:
        assert await _select_one(dsn) == 1
        assert _postmaster_pid(pgdata) != bystander.pid
    assert bystander.poll() is None


async def test_postgres_adopts_the_server_of_a_killed_owner(pg_dir: Path) -> None:
    owner = _spawn_owner(f"""
        import time
        from pathlib import Path
        from internal.devenv.embedded import EmbeddedPostgres
        print(EmbeddedPostgres(Path({str(pg_dir)!r})).start(), flush=True)
        time.sleep(60)
    """)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().startswith("postgresql://")
        postmaster = _postmaster_pid(pg_dir / "pgdata")
        owner.kill()
        owner.wait()
        assert _alive(postmaster)  # pg_ctl daemonized it: nothing can tie it to its owner's life

        server = EmbeddedPostgres(pg_dir)
        with server as dsn:
            assert _postmaster_pid(pg_dir / "pgdata") == postmaster
            assert await _select_one(dsn) == 1
        assert not _alive(postmaster)
    finally:
        owner.kill()
        owner.wait()


def test_postgres_folder_has_one_owner(pg_dir: Path) -> None:
    with EmbeddedPostgres(pg_dir), pytest.raises(FolderInUse, match="in use by another process") as busy:
        EmbeddedPostgres(pg_dir).start()
    assert busy.value.folder == pg_dir.resolve()


async def test_postgres_attach_uses_the_owners_server_and_leaves_it_running(pg_dir: Path) -> None:
    owner = EmbeddedPostgres(pg_dir)
    with owner as dsn:
        postmaster = _postmaster_pid(pg_dir / "pgdata")
        assert EmbeddedPostgres(pg_dir).attach() == dsn
        assert await _select_one(EmbeddedPostgres(pg_dir).attach()) == 1
        assert _alive(postmaster)
    with pytest.raises(RuntimeError, match=f"no PostgreSQL runs on {pg_dir.resolve() / 'pgdata'}"):
        EmbeddedPostgres(pg_dir).attach()


def test_postgres_refuses_a_cluster_of_another_major_version(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("17\n")
    with pytest.raises(RuntimeError, match=rf"{pgdata}.*PostgreSQL 17"):
        EmbeddedPostgres(tmp_path).start()
    assert (pgdata / "PG_VERSION").read_text() == "17\n"  # untouched


async def test_redis_start_ping_set_get_stop(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    assert url == f"unix://{tmp_path / 'redis.sock'}"
    assert server.start() == url
    pid = int((tmp_path / "redis.pid").read_text())
    client = aioredis.from_url(url)
    try:
        assert await client.ping()
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
    server.stop()
    server.stop()
    assert not _alive(pid)
    assert not (tmp_path / "redis.sock").exists()

    with server as url:  # warm restart, no persistence
        client = aioredis.from_url(url)
        try:
            assert await client.get("k") is None
        finally:
            await client.aclose()


async def test_redis_removes_a_stale_socket(tmp_path: Path) -> None:
    stale = tmp_path / "redis.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # closing leaves the file behind, like a killed server
    assert stale.is_socket()
    with EmbeddedRedis(tmp_path) as url:
        client = aioredis.from_url(url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()


def test_redis_folder_has_one_owner(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path), pytest.raises(FolderInUse, match="in use by another process"):
        EmbeddedRedis(tmp_path).start()


async def test_redis_attach_uses_the_owners_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as url:
        assert EmbeddedRedis(tmp_path).attach() == url
        client = aioredis.from_url(EmbeddedRedis(tmp_path).attach())
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    with pytest.raises(RuntimeError, match="no Redis answers on"):
        EmbeddedRedis(tmp_path).attach()


async def test_redis_dies_with_its_killed_owner(tmp_path: Path) -> None:
    # Started from a short-lived worker thread, as asyncio.to_thread would: the parent-death signal is
    # tied to the forking thread, so this also checks the child does not die when that thread ends.
    owner = _spawn_owner(f"""
        import threading, time
        from pathlib import Path
        from internal.devenv.embedded import EmbeddedRedis
        server = EmbeddedRedis(Path({str(tmp_path)!r}))
        worker = threading.Thread(target=server.start)
        worker.start()
        worker.join()
        time.sleep(0.3)
        print(Path({str(tmp_path / "redis.pid")!r}).read_text().strip(), flush=True)
        time.sleep(60)
    """)
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert _alive(pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _wait_dead(pid), "redis-server outlived its SIGKILLed owner"
    finally:
        owner.kill()
        owner.wait()

    with EmbeddedRedis(tmp_path) as url:  # the dead server's socket and pid file are cleaned up
        client = aioredis.from_url(url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
