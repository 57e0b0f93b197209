"""Dependency-aware health: grpc.health.v1 (overall and per service) and readiness for /readyz.

A background task pings PostgreSQL and Redis; while either is unreachable every service reports
NOT_SERVING, and it flips back by itself when they recover. Shutdown sets NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health, health_pb2
from prometheus_client import Counter

log = logging.getLogger(__name__)

DEPENDENCY_ERRORS = Counter("dependency_errors_total", "Failed dependency health probes", ["dependency"])
Probe = Callable[[], Awaitable[object]]


class DependencyHealth:
    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
        probes: dict[str, Probe],
        interval: float = 2.0,
        timeout: float = 1.5,
    ) -> None:
        self.servicer = servicer
        self._services = ["", *service_names]
        self._probes = probes
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._shutting_down = False
        self.ready = False
        self.failing: list[str] = []

    async def check_once(self) -> bool:
        failing = []
        for name, probe in self._probes.items():
            try:
                async with asyncio.timeout(self._timeout):
                    await probe()
            except Exception:
                DEPENDENCY_ERRORS.labels(name).inc()
                failing.append(name)
        if failing != self.failing:
            if failing:
                log.warning("dependencies unreachable", extra={"dependencies": ",".join(failing)})
            elif self.failing:
                log.info("dependencies reachable again")
        self.failing = failing
        self.ready = not failing and not self._shutting_down
        await self._publish()
        return self.ready

    async def _publish(self) -> None:
        if self._shutting_down:
            return
        status = health_pb2.HealthCheckResponse.SERVING if self.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._services:
            await self.servicer.set(name, status)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    async def start(self) -> None:
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name="dependency-health")

    async def shutdown(self) -> None:
        """NOT_SERVING for every service from now on, so load balancers drain this replica."""
        self._shutting_down = True
        self.ready = False
        if self._task:
            self._task.cancel()
            # A cancellation can be lost inside a driver's own read timeout (redis-py), and the probe loop
            # would then run on: never let it hold up the drain.
            await asyncio.wait({self._task}, timeout=self._timeout + 1)
        await self.servicer.enter_graceful_shutdown()
