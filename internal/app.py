"""The service process: gRPC + HTTP servers on the composition root, background jobs, graceful shutdown.

Start-up before this (flags, configuration, the embedded servers of the development default, migrations,
the supervisor for ``--workers``) belongs to the entry script, ``cmd/server/main.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

from internal.biz.kms import DEFAULT_KEY
from internal.conf.config import Bootstrap
from internal.container import Wired, build
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


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM/SIGINT; install it before any start-up work, so no signal is lost."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(config: Bootstrap, stop: asyncio.Event) -> None:
    """Serve ``config`` (database and Redis URLs resolved) until ``stop``, then drain in-flight RPCs within
    the grace period and release everything."""
    setup_tracing(config.monitoring)
    try:
        async with build(config) as wired:
            await _run_servers(wired, config, stop)
        log.info("stopped")
    finally:
        await asyncio.to_thread(shutdown_tracing)


async def _run_servers(wired: Wired, config: Bootstrap, stop: asyncio.Event) -> None:
    health_check = wired.dependency_health
    services = wired.services
    proxies = wired.trusted_proxies
    server, port = new_grpc_server(config.server.grpc, services, wired.health_servicer, proxies)
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
        async with (
            kms_gauges(functools.partial(wired.key_admin.status, DEFAULT_KEY)),
            every(config.auth.session_purge_interval, wired.tokens.purge_expired, "session purge"),
            every(config.auth.session_purge_interval, wired.accounts.purge_deleted, "deleted account purge"),
            once_in_background(wired.users.backfill_identifier_keys, "identifier key backfill"),
        ):
            await stop.wait()
    finally:
        log.info("shutting down", extra={"grace_s": config.server.grpc.grace_period.total_seconds()})
        await health_check.shutdown()
        # Both transports drain their in-flight calls at once, within the one grace period.
        await asyncio.gather(server.stop(grace), http.stop())
