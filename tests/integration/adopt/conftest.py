"""A database of its own per test: each one is turned into the Go service's, or into someone else's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest


@pytest.fixture
async def own_db(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"test_adopt_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(postgres_server_url)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
