"""Closed-loop gRPC load: ``processes`` client processes, each with a few grpc.aio channels (separate TCP
connections) and its share of ``concurrency`` tasks, each task keeping one call in flight.

Every process warms up, then all meet at a barrier and count the calls that complete during the next
``seconds``; the rate is the sum of each process's count divided by its own measured window. The same
design serves every operation, so two rates (e.g. Encrypt and health Check) differ only in what the
server does for them. Any failed call fails the measurement.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc

FIELD = "users.email"
CONTEXT = {"tenant": "bench", "table": "users"}
PLAINTEXT_BYTES = 32
PASSWORD = "Bench-passw0rd-42"
CALL_TIMEOUT = 60.0
_START_TIMEOUT = 120.0

OPERATIONS = ("check", "encrypt", "batch", "register", "login")


@dataclass(frozen=True)
class LoadSpec:
    target: str
    operation: str
    concurrency: int  # calls in flight over all processes
    seconds: float
    warmup: float
    processes: int = 2
    channels: int = 2  # per process; each is its own TCP connection
    token: str = ""  # kms credential, for encrypt/batch
    batch_size: int = 1000
    users: tuple[str, ...] = ()  # login: task i logs in as users[i % len(users)]
    tag: str = ""  # register: unique username prefix
    key_names: tuple[str, ...] = ()  # encrypt: the named keys successive calls cycle through (empty: default)

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"unknown operation {self.operation!r}")
        if self.concurrency < 1 or self.processes < 1 or self.channels < 1:
            raise ValueError("concurrency, processes and channels must be positive")


@dataclass
class LoadResult:
    operation: str
    calls: int  # completed inside the measured windows
    items: int  # fields for batch, else == calls
    seconds: float  # mean measured window
    rate: float  # calls/s over all processes
    item_rate: float  # items/s over all processes
    total_calls: int  # including warm-up and calls finishing after the window
    concurrency: int
    processes: int
    window: tuple[float, float]  # wall-clock (time.time) span every client process was measuring in
    client_cpu: float  # CPU seconds per second of the client processes together (2.0 = two busy cores)
    registered: list[str] = field(default_factory=list)  # register: one username per task
    server_cpu: float = float("nan")  # filled in by the caller that samples the server, same unit


def _tasks_per_process(spec: LoadSpec) -> list[int]:
    base, extra = divmod(spec.concurrency, spec.processes)
    return [base + (1 if i < extra else 0) for i in range(spec.processes)]


def _channel_options() -> list[tuple[str, Any]]:
    return [
        # Without a local pool, channels to one target share one connection (one HTTP/2 stream limit, and
        # with SO_REUSEPORT workers one worker); each channel gets its own TCP connection this way.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]


Call = Callable[[], Awaitable[int]]  # one RPC; returns the number of items it handled


def _make_call(spec: LoadSpec, channel: grpc.aio.Channel, task: int, proc: int, out: list[str]) -> Call:
    metadata = (("authorization", f"Bearer {spec.token}"),)
    if spec.operation == "check":
        health = health_pb2_grpc.HealthStub(channel)
        check_request = health_pb2.HealthCheckRequest()

        async def check() -> int:
            await health.Check(check_request, timeout=CALL_TIMEOUT)
            return 1

        return check
    if spec.operation == "encrypt":
        kms = kms_pb2_grpc.KMSStub(channel)
        plaintext = os.urandom(PLAINTEXT_BYTES)
        requests = [
            kms_pb2.EncryptRequest(key_name=name, field=FIELD, plaintext=plaintext, context=CONTEXT)
            for name in spec.key_names or ("",)
        ]
        turn = itertools.count(task)

        async def encrypt() -> int:
            request = requests[next(turn) % len(requests)]
            await kms.Encrypt(request, metadata=metadata, timeout=CALL_TIMEOUT)
            return 1

        return encrypt
    if spec.operation == "batch":
        kms = kms_pb2_grpc.KMSStub(channel)
        items = [
            kms_pb2.EncryptItem(field=FIELD, plaintext=os.urandom(PLAINTEXT_BYTES), context=CONTEXT)
            for _ in range(spec.batch_size)
        ]
        batch_request = kms_pb2.EncryptBatchRequest(items=items, key_name=spec.key_names[0] if spec.key_names else "")

        async def batch() -> int:
            reply = await kms.EncryptBatch(batch_request, metadata=metadata, timeout=CALL_TIMEOUT)
            failed = sum(1 for r in reply.results if r.status.code != 0)
            if failed or len(reply.results) != spec.batch_size:
                raise RuntimeError(f"EncryptBatch: {failed} of {len(reply.results)} items failed")
            return len(reply.results)

        return batch
    auth = auth_pb2_grpc.AuthStub(channel)
    if spec.operation == "register":
        counter = iter(range(1 << 62))

        async def register() -> int:
            username = f"b{spec.tag}_{proc}_{task}_{next(counter)}"
            await auth.Register(
                auth_pb2.RegisterRequest(username=username, password=PASSWORD, email=f"{username}@x.io"),
                timeout=CALL_TIMEOUT,
            )
            if not out:
                out.append(username)  # the task's first user, for the login measurement
            return 1

        return register
    if not spec.users:
        raise ValueError("login needs users")
    login_request = auth_pb2.LoginRequest(username=spec.users[task % len(spec.users)], password=PASSWORD)

    async def login() -> int:
        reply = await auth.Login(login_request, timeout=CALL_TIMEOUT)
        if not reply.access_token:
            raise RuntimeError("Login returned no access token")
        return 1

    return login


async def _client(spec: LoadSpec, proc: int, barrier: Barrier) -> dict[str, Any]:
    counts = _tasks_per_process(spec)
    first_task = sum(counts[:proc])
    channels = [grpc.aio.insecure_channel(spec.target, options=_channel_options()) for _ in range(spec.channels)]
    registered: list[str] = []
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        state = {"measuring": False, "stop": False, "calls": 0, "items": 0, "total": 0}
        failure: list[BaseException] = []

        async def run(task: int) -> None:
            local: list[str] = []
            call = _make_call(spec, channels[task % len(channels)], first_task + task, proc, local)
            try:
                while not state["stop"]:
                    items = await call()
                    state["total"] += 1
                    if state["measuring"]:
                        state["calls"] += 1
                        state["items"] += items
            except BaseException as exc:
                failure.append(exc)
                state["stop"] = True
            finally:
                registered.extend(local)

        tasks = [asyncio.create_task(run(i)) for i in range(counts[proc])]
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
            exc = failure[0]
            detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
            raise RuntimeError(f"{spec.operation} call failed in client process {proc}: {detail}")
        return {
            "calls": state["calls"],
            "items": state["items"],
            "total": state["total"],
            "seconds": elapsed,
            "window": (wall_start, wall_end),
            "cpu": cpu,
            "registered": registered,
        }
    finally:
        for channel in channels:
            await channel.close()


Client = Callable[[Any, int, Barrier], Coroutine[Any, Any, dict[str, Any]]]  # (spec, process index, barrier) -> counts


def _client_process(
    spec: LoadSpec, proc: int, barrier: Barrier, results: multiprocessing.Queue[Any], client: Client = _client
) -> None:
    try:
        results.put((proc, asyncio.run(client(spec, proc, barrier))))
    except BaseException as exc:
        barrier.abort()
        results.put((proc, {"error": f"{exc}\n{traceback.format_exc(limit=5)}"}))


def run_load(spec: LoadSpec, client: Client = _client) -> LoadResult:
    """Run ``spec`` in ``spec.processes`` fresh client processes; raises RuntimeError if any call failed.

    ``client`` is what each process runs: the gRPC client here, or another transport's (bench.http_load)."""
    ctx = multiprocessing.get_context("spawn")  # no fork after grpc has started threads
    barrier = ctx.Barrier(spec.processes)
    results: multiprocessing.Queue[Any] = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_process, args=(spec, i, barrier, results, client), name=f"bench-client-{i}", daemon=True
        )
        for i in range(spec.processes)
    ]
    budget = spec.warmup + spec.seconds + _START_TIMEOUT + CALL_TIMEOUT
    outcomes: dict[int, dict[str, Any]] = {}
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + budget
        while len(outcomes) < len(procs):
            try:
                index, outcome = results.get(timeout=1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.operation}: client processes did not finish in {budget:.0f}s") from None
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs) and results.empty():
                    codes = [p.exitcode for p in procs]
                    raise RuntimeError(f"{spec.operation}: a client process died (exit codes {codes})") from None
                continue
            outcomes[index] = outcome
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    errors = [o["error"] for o in outcomes.values() if "error" in o]
    if errors:
        raise RuntimeError(errors[0])
    done = list(outcomes.values())
    windows = [o["seconds"] for o in done]
    return LoadResult(
        operation=spec.operation,
        calls=sum(o["calls"] for o in done),
        items=sum(o["items"] for o in done),
        seconds=sum(windows) / len(windows),
        rate=sum(o["calls"] / o["seconds"] for o in done),
        item_rate=sum(o["items"] / o["seconds"] for o in done),
        total_calls=sum(o["total"] for o in done),
        concurrency=spec.concurrency,
        processes=spec.processes,
        window=(max(o["window"][0] for o in done), min(o["window"][1] for o in done)),
        client_cpu=sum(o["cpu"] / o["seconds"] for o in done),
        registered=[u for o in done for u in o["registered"]],
    )
