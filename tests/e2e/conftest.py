"""Fixtures for end-to-end tests: servers on the run's test database and an isolated Redis key prefix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, start_server


@pytest.fixture
def server_env(database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a server on the run's test database and an isolated Redis key prefix."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP__DATA__REDIS__KEY_PREFIX": redis_prefix,
        "APP__DATA__DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def server(tmp_path: Path, server_env: dict[str, str]) -> Iterator[ServerProcess]:
    process = start_server(tmp_path, server_env)
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()
