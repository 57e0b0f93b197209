"""Process lifecycle: dependencies up, migrations, gRPC + monitoring servers, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

from internal.biz.kms import DEFAULT_KEY
from internal.conf.config import Bootstrap
from internal.container import Container
from internal.data.migrate import migrate_up
from internal.pkg.tracing import setup_tracing, shutdown_tracing
from internal.server.gateway import Invoker, routes
from internal.server.grpc import new_grpc_server, server_interceptors
from internal.server.http import HttpServer
from internal.server.metrics import kms_gauges

log = logging.getLogger(__name__)


async def _logged(job: Callable[[], Awaitable[int]], name: str) -> None:
    """Run ``job`` once; a failure is logged, never raised (it must not stop the server)."""
    try:
        done = await job()
        log.info(f"{name} done", extra={"rows": done})
    except Exception as exc:
        log.warning(f"{name} failed", extra={"error": type(exc).__name__})


@contextlib.asynccontextmanager
async def _in_background(work: Coroutine[Any, Any, None] | None, name: str) -> AsyncIterator[None]:
    """Run ``work`` as a task while the block runs; cancel it when the block ends."""
    task = asyncio.create_task(work, name=name) if work is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def every(interval: timedelta, job: Callable[[], Awaitable[int]], name: str) -> AbstractAsyncContextManager[None]:
    """Run ``job`` every ``interval`` in the background while the block runs (a zero interval: never).

    A failure is logged and retried at the next interval; it never stops the server."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval.total_seconds())
            await _logged(job, name)

    return _in_background(loop() if interval > timedelta(0) else None, name)


def once_in_background(job: Callable[[], Awaitable[int]], name: str) -> AbstractAsyncContextManager[None]:
    """Run ``job`` once in the background while the block runs (cancelled if the block ends first)."""
    return _in_background(_logged(job, name), name)


async def resolve(value: Any) -> Any:
    """Providers that depend on async resources return awaitables; everything else is ready."""
    return await value if inspect.isawaitable(value) else value


@contextlib.asynccontextmanager
async def dependencies(config: Bootstrap) -> AsyncIterator[Bootstrap]:
    """Yield the config with database/Redis URLs filled in, starting embedded servers for empty ones."""
    stack = contextlib.ExitStack()
    database, redis = config.data.database, config.data.redis
    data_dir = Path(config.data.data_dir).resolve()
    try:
        if not database.url or not redis.url:
            from internal.pkg.embedded import EmbeddedPostgres, EmbeddedRedis

            if not database.url:
                pg = EmbeddedPostgres(data_dir / "postgres")
                stack.callback(pg.stop)
                database = database.model_copy(update={"url": await asyncio.to_thread(pg.start)})
                log.info("using embedded postgresql", extra={"data_dir": str(data_dir / "postgres")})
            if not redis.url:
                rd = EmbeddedRedis(data_dir / "redis")
                stack.callback(rd.stop)
                redis = redis.model_copy(update={"url": await asyncio.to_thread(rd.start)})
                log.info("using embedded redis", extra={"data_dir": str(data_dir / "redis")})
        data = config.data.model_copy(update={"database": database, "redis": redis})
        yield config.model_copy(update={"data": data})
    finally:
        await asyncio.to_thread(stack.close)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(config: Bootstrap) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight RPCs within the grace period and release everything."""
    stop = _stop_event()
    setup_tracing(config.monitoring)
    try:
        await _serve(config, stop)
    finally:
        await asyncio.to_thread(shutdown_tracing)


async def _serve(config: Bootstrap, stop: asyncio.Event) -> None:
    async with dependencies(config) as config:
        if config.data.database.auto_migrate:
            applied = await migrate_up(config.data.database.url)
            if applied:
                log.info("migrations applied", extra={"versions": applied})
        container = Container(config=config)
        await resolve(container.init_resources())
        try:
            await _run_servers(container, config, stop)
        finally:
            await resolve(container.shutdown_resources())
    log.info("stopped")


async def _run_servers(container: Container, config: Bootstrap, stop: asyncio.Event) -> None:
    health_check = await resolve(container.dependency_health())
    services = await resolve(container.services())
    proxies = container.trusted_proxies()
    server, port = new_grpc_server(config.server.grpc, services, container.health_servicer(), proxies)
    route_table = routes(services)
    grace = config.server.grpc.grace_period.total_seconds()
    http = HttpServer(
        config.server.http,
        route_table,
        Invoker(server_interceptors(proxies), route_table),
        lambda: health_check.ready,
        reuse_port=config.server.grpc.workers > 1,
        grace=grace,
    )
    await health_check.start()
    await server.start()
    if config.server.http.enabled:
        await http.start()
    names = [s.full_name for s in services]
    log.info("serving", extra={"grpc_port": port, "http_routes": len(route_table), "services": names})
    try:
        tokens = await resolve(container.biz.tokens())
        users = await resolve(container.biz.users())
        async with (
            kms_gauges(functools.partial((await resolve(container.biz.key_admin())).status, DEFAULT_KEY)),
            every(config.auth.session_purge_interval, tokens.purge_expired, "session purge"),
            once_in_background(users.backfill_identifier_keys, "identifier key backfill"),
        ):
            await stop.wait()
    finally:
        log.info("shutting down", extra={"grace_s": config.server.grpc.grace_period.total_seconds()})
        await health_check.shutdown()
        # Both transports drain their in-flight calls at once, within the one grace period.
        await asyncio.gather(server.stop(grace), http.stop())
