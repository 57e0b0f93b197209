"""Fill in the database/Redis URLs left empty in the configuration with the embedded servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from internal.conf.config import Bootstrap
from internal.devenv.embedded import EmbeddedPostgres, EmbeddedRedis, FolderInUse

log = logging.getLogger(__name__)


class EmbeddedUnavailable(RuntimeError):
    """The embedded servers can be neither started nor reached; the message says why and what to do."""


@contextlib.asynccontextmanager
async def embedded_servers(config: Bootstrap, *, share: bool) -> AsyncIterator[Bootstrap]:
    """Yield ``config`` with every empty URL pointing at an embedded server under ``data.data_dir``.

    The first process on the folder starts the servers and stops them when the block ends. With
    ``share`` (CLI commands), a folder another process owns, such as a running service, is used
    through that owner's servers, which stay running; without it (a second service) that is an error.
    """
    database, redis = config.data.database, config.data.redis
    data_dir = Path(config.data.data_dir).resolve()
    stack = contextlib.ExitStack()
    try:
        if not database.url:
            url = await _start_or_attach(EmbeddedPostgres(data_dir / "postgres"), "PostgreSQL", share, stack)
            log.info("using embedded postgresql", extra={"data_dir": str(data_dir / "postgres")})
            database = database.model_copy(update={"url": url})
        if not redis.url:
            url = await _start_or_attach(EmbeddedRedis(data_dir / "redis"), "Redis", share, stack)
            log.info("using embedded redis", extra={"data_dir": str(data_dir / "redis")})
            redis = redis.model_copy(update={"url": url})
        data = config.data.model_copy(update={"database": database, "redis": redis})
        yield config.model_copy(update={"data": data})
    finally:
        await asyncio.to_thread(stack.close)


async def _start_or_attach(
    server: EmbeddedPostgres | EmbeddedRedis, name: str, share: bool, stack: contextlib.ExitStack
) -> str:
    try:
        url = await asyncio.to_thread(server.start)
    except FolderInUse as busy:
        if not share:
            raise EmbeddedUnavailable(
                f"{busy}: is the service already running? A second one needs its own data.data_dir, "
                f"or configured database and Redis URLs"
            ) from None
        try:
            url = await asyncio.to_thread(server.attach)
        except RuntimeError as why:
            raise EmbeddedUnavailable(
                f"the embedded {name} in {busy.folder} belongs to pid {busy.owner or 'unknown'}, "
                f"but cannot be used: {why}. Retry once that process has started, or stop it"
            ) from None
        log.info("sharing the running embedded server", extra={"server": name, "owner": busy.owner})
        return url
    stack.callback(server.stop)
    return url
