"""The CLI's failures on the embedded default and the dev outbox: one clear line, never a traceback or a class name.

(That CLI commands work beside a running service on the embedded default is the README quickstart's test,
tests/e2e/test_readme_quickstart.py.)
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.helpers import admin_sql, with_database

ROOT = Path(__file__).resolve().parents[2]
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]+(Error|Exception|Refused|Failed)\b")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP__") and k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "APP__KMS__ITERATIONS": "10000", **extra}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "cmd/server/main.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _message(result: subprocess.CompletedProcess[str]) -> str:
    """The command's own line (the log lines before it are JSON)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("authkms: ")]
    assert len(lines) == 1, result.stderr
    assert not CLASS_NAME.search(lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def held_postgres_folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """``<data_dir>/postgres`` owned (flock held) by another live process that runs no server."""
    folder = tmp_path / "data" / "postgres"
    folder.mkdir(parents=True)
    lock = folder / "owner.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"f = open({str(lock)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(f'{{os.getpid()}}\\n'); f.flush()\n"
            "print('held', flush=True); time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with lock.open() as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield tmp_path / "data", holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_command_beside_an_owner_without_a_server_says_why(held_postgres_folder: tuple[Path, int]) -> None:
    data_dir, owner = held_postgres_folder
    result = _cli(_env(APP__DATA__DATA_DIR=str(data_dir)), "credentials", "list")
    assert result.returncode == 1
    line = _message(result)
    assert f"the embedded PostgreSQL in {data_dir.resolve() / 'postgres'} belongs to pid {owner}" in line
    assert "no PostgreSQL runs on" in line and "Retry once that process has started, or stop it" in line


def test_a_second_service_on_the_same_folder_is_refused_clearly(held_postgres_folder: tuple[Path, int]) -> None:
    data_dir, owner = held_postgres_folder
    result = _cli(_env(APP__DATA__DATA_DIR=str(data_dir), APP__SERVER__GRPC__ADDR="127.0.0.1:0"), "serve")
    assert result.returncode == 1
    line = _message(result)
    assert f"is in use by another process (pid {owner})" in line and "is the service already running?" in line


def test_an_unreachable_database_is_one_clear_line(redis_url: str) -> None:
    result = _cli(
        _env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/postgres", REDIS_URL=redis_url), "users", "unlock", "x"
    )
    assert result.returncode == 1
    assert _message(result).startswith("authkms: cannot reach PostgreSQL or Redis")


def test_an_unmigrated_database_asks_for_migrate_up(postgres_server_url: str, redis_url: str) -> None:
    name = f"unmigrated_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}"'))
    try:
        env = _env(DATABASE_URL=with_database(postgres_server_url, name), REDIS_URL=redis_url)
        result = _cli(env, "credentials", "list")
    finally:
        asyncio.run(admin_sql(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    assert result.returncode == 1
    assert _message(result) == (
        "authkms: the database schema is missing or out of date: run `migrate up` (serve migrates at start)"
    )


def test_dev_outbox_needs_the_outbox_on() -> None:
    result = _cli(_env(APP__AUTH__DEV_OUTBOX="false"), "dev", "outbox", "a@example.com")
    assert result.returncode == 2
    assert _message(result) == "authkms: auth.dev_outbox is off: codes go out by email/SMS and are not kept"


def test_dev_outbox_is_refused_in_production() -> None:
    result = _cli(_env(APP__SECURITY__MODE="production"), "dev", "outbox", "a@example.com")
    assert result.returncode == 2
    assert "auth.dev_outbox: the development outbox is refused in production mode" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_outbox_reads_the_newest_code(database_url: str, redis_url: str, redis_prefix: str) -> None:
    key = f"{redis_prefix}dev-outbox:bob@example.com"

    async def redis_call(*command: str) -> None:
        client = aioredis.from_url(redis_url)
        try:
            await client.execute_command(*command)
        finally:
            await client.aclose()

    asyncio.run(redis_call("LPUSH", key, "111111", "222222"))  # as DevOutboxSender.send leaves them
    try:
        env = _env(DATABASE_URL=database_url, REDIS_URL=redis_url, APP__DATA__REDIS__KEY_PREFIX=redis_prefix)
        newest = _cli(env, "dev", "outbox", " Bob@Example.com ")  # normalized as the captcha use case does
        every = _cli(env, "dev", "outbox", "bob@example.com", "--all")
        none = _cli(env, "dev", "outbox", "carol@example.com")
        invalid = _cli(env, "dev", "outbox", "not-an-address@")
    finally:
        asyncio.run(redis_call("DEL", key))
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout == "222222\n"
    assert every.stdout == "222222\n111111\n"
    assert none.returncode == 1
    assert _message(none) == "authkms: no code kept for carol@example.com (none sent, or expired)"
    assert invalid.returncode == 1
    assert _message(invalid) == "authkms: VALIDATION_ERROR: a valid email address is required"
