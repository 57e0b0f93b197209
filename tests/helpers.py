"""Plain helpers shared by test packages (fixtures live in the conftest files)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def admin_sql(url: str, statement: str) -> None:
    """Run one statement on its own connection (CREATE/DROP DATABASE cannot run in a pool's transaction)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
