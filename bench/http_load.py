"""The HTTP/JSON side of the benchmark: closed-loop Encrypt load and sequential Logins over HTTP/1.1.

The load has the design of ``bench.load`` (client processes, one call in flight per task, a barrier, one
measured window) with one keep-alive connection per task, as browsers and HTTP client pools do. Each
request is encoded once and written as it is; of a reply only the status line and Content-Length are read
(the body is received in full and counted, not decoded), so the client's own CPU stays as low as gRPC's
C-core client and the two rates compare the servers, which share the machine's cores with the clients.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

from bench.load import _START_TIMEOUT, CALL_TIMEOUT, CONTEXT, FIELD, PASSWORD, PLAINTEXT_BYTES, _tasks_per_process
from bench.measure import Samples, _sample


@dataclass(frozen=True)
class HttpLoadSpec:
    port: int
    operation: str  # "http_encrypt"
    concurrency: int
    seconds: float
    warmup: float
    token: str
    processes: int = 2


def encrypt_request(port: int, token: str) -> bytes:
    """One Encrypt call as HTTP/1.1 bytes: JSON body, bearer credential, keep-alive."""
    body = json.dumps(
        {"field": FIELD, "plaintext": base64.b64encode(os.urandom(PLAINTEXT_BYTES)).decode(), "context": CONTEXT}
    ).encode()
    head = (
        f"POST /api/v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        status_line = head.partition(b"\r\n")[0].decode(errors="replace")
        raise RuntimeError(f"HTTP call failed: {status_line}")
    marker = head.lower().index(b"content-length:") + len(b"content-length:")
    await reader.readexactly(int(head[marker : head.index(b"\r\n", marker)]))


async def _client(spec: HttpLoadSpec, proc: int, barrier: Barrier) -> dict[str, Any]:
    count = _tasks_per_process(spec)[proc]  # type: ignore[arg-type]
    request = encrypt_request(spec.port, spec.token)
    connections = [await asyncio.open_connection("127.0.0.1", spec.port) for _ in range(count)]
    state = {"measuring": False, "stop": False, "calls": 0, "total": 0}
    failure: list[BaseException] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not state["stop"]:
                await asyncio.wait_for(_exchange(reader, writer, request), CALL_TIMEOUT)
                state["total"] += 1
                if state["measuring"]:
                    state["calls"] += 1
        except BaseException as exc:
            failure.append(exc)
            state["stop"] = True

    try:
        tasks = [asyncio.create_task(run(r, w)) for r, w in connections]
        await asyncio.sleep(spec.warmup)
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait, _START_TIMEOUT)
        started, wall_start, cpu_start = time.perf_counter(), time.time(), time.process_time()
        state["measuring"] = True
        await asyncio.sleep(spec.seconds)
        state["measuring"] = False
        elapsed, wall_end, cpu = time.perf_counter() - started, time.time(), time.process_time() - cpu_start
        state["stop"] = True
        await asyncio.gather(*tasks)
        if failure:
            raise RuntimeError(f"{spec.operation} call failed in client process {proc}: {failure[0]!r}")
        calls = state["calls"]
        return {"calls": calls, "items": calls, "total": state["total"], "seconds": elapsed,
                "window": (wall_start, wall_end), "cpu": cpu, "registered": []}  # fmt: skip
    finally:
        for _, writer in connections:
            writer.close()


def http_login_times(port: int, username: str, seconds: float, min_samples: int, max_samples: int = 500) -> Samples:
    """Sequential HTTP Logins of one user on one keep-alive connection, after two unmeasured ones."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"username": username, "password": PASSWORD})
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def login() -> None:
        connection.request("POST", "/api/v1/auth/login", body=body, headers=headers)
        reply = connection.getresponse()
        payload = reply.read()
        if reply.status != 200 or not json.loads(payload).get("accessToken"):
            raise RuntimeError(f"HTTP Login failed: {reply.status}")

    try:
        login()
        login()
        return _sample(login, seconds, min_samples, max_samples)
    finally:
        connection.close()
