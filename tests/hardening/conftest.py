"""Hardening fixtures: a private Redis, a fresh database, three replicas, a KMS credential, the summary.

The summary is printed at the end of the run (``pytest_terminal_summary``) and written to
``.data/hardening-summary.txt``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from internal.data.migrate import migrate_up
from tests.e2e.harness import create_credential
from tests.hardening.cluster import Cluster, PrivateRedis, data_root, server_env
from tests.hardening.summary import SUMMARY
from tests.helpers import admin_sql, with_database

SUMMARY_FILE = data_root() / "hardening-summary.txt"
_started = time.monotonic()
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/hardening/" in report.nodeid and (report.when == "call" or report.outcome != "passed"):
        _outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY.empty and not _outcomes:
        return
    passed = sum(1 for o in _outcomes.values() if o == "passed")
    outcome = f"{passed}/{len(_outcomes)} passed"
    text = SUMMARY.render(time.monotonic() - _started, outcome)
    SUMMARY_FILE.write_text(text)
    terminalreporter.write_sep("=", "hardening summary")
    terminalreporter.write(text)
    terminalreporter.write_line(f"(kept in {SUMMARY_FILE})")


@pytest.fixture(scope="session")
def hardening_dir() -> Iterator[Path]:
    """.data/hardening-<uuid>: private Redis and PostgreSQL files, server logs. Removed after a clean run,
    kept (and named in the summary) when a hardening test failed."""
    path = data_root() / f"hardening-{uuid.uuid4().hex[:10]}"
    path.mkdir(parents=True)
    yield path
    if all(outcome == "passed" for outcome in _outcomes.values()):
        shutil.rmtree(path, ignore_errors=True)
    else:
        SUMMARY.failures.append(f"server logs and data kept in {path}")


@pytest.fixture(scope="session")
def private_redis(hardening_dir: Path) -> Iterator[PrivateRedis]:
    """A Redis only this suite uses, so stopping it never disturbs other runs."""
    server = PrivateRedis(hardening_dir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hardening_database(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated database of its own (key counts and users are asserted exactly)."""
    name = f"hardening_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(postgres_server_url, name)
    asyncio.run(migrate_up(url))
    try:
        yield url
    finally:
        asyncio.run(admin_sql(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def cluster(hardening_dir: Path, hardening_database: str, private_redis: PrivateRedis) -> Iterator[Cluster]:
    """Three replicas on one database and one Redis key prefix."""
    env = server_env(hardening_database, private_redis.url, f"hard:{uuid.uuid4().hex[:8]}:", hardening_dir / "data")
    logs = hardening_dir / "logs"
    logs.mkdir()
    group = Cluster(logs, env)
    try:
        group.start(3)
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def credential(cluster: Cluster) -> str:
    """A KMS service credential with every scope, made with the CLI."""
    return create_credential(cluster.cli_env(), "hardening", "kms.encrypt,kms.decrypt,kms.datakey,kms.admin")
