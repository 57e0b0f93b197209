"""The monitoring HTTP port: /metrics (Prometheus), /healthz (process alive), /readyz (dependencies up).

Three fixed GET routes need no web framework; this is a deliberately tiny HTTP/1.1 responder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

log = logging.getLogger(__name__)


def _metrics() -> bytes:
    """This process's metrics, or with ``--workers`` (a shared multiprocess folder) every worker's, summed."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


class MonitoringServer:
    def __init__(self, addr: str, is_ready: Callable[[], bool]) -> None:
        self._host, _, port = addr.rpartition(":")
        self._port = int(port)
        self._is_ready = is_ready
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, _metrics()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready = self._is_ready()
            return (200 if ready else 503), "text/plain", b"ready\n" if ready else b"not ready\n"
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request_line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self._route(path) if method == "GET" else (405, "text/plain", b"method not allowed\n")
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, reuse_port=True)
        log.info("monitoring http listening", extra={"addr": f"{self._host}:{self.port}"})

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
