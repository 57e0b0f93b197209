"""Single measurements that are not closed-loop gRPC load: in-process baselines, sequential logins,
server metrics and the spread of client connections over worker processes."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from authkms_client import CacheLimits, EnvelopeEncryptor, KmsClient
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from bench.floor import FloorKMS
from bench.load import CONTEXT, FIELD, PASSWORD, PLAINTEXT_BYTES
from internal.biz.password import Argon2Params, Argon2PasswordHasher
from internal.pkg.kms.envelope import Algorithm, DataKey, Sealer
from tests.e2e.harness import ServerProcess


@dataclass(frozen=True)
class Samples:
    """Durations in seconds."""

    values: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    @property
    def p90(self) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def _sample(fn: Callable[[], None], seconds: float, min_samples: int, max_samples: int) -> Samples:
    """Time ``fn`` repeatedly: for ``seconds``, but at least ``min_samples`` and at most ``max_samples`` times."""
    values: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(values) < max_samples and (len(values) < min_samples or time.perf_counter() < deadline):
        started = time.perf_counter()
        fn()
        values.append(time.perf_counter() - started)
    return Samples(values)


# ---- in-process baselines -----------------------------------------------------------------------------


def aesgcm_rate(seconds: float) -> float:
    """AES-256-GCM encryptions/s of 32-byte plaintexts, fresh ``os.urandom(12)`` nonce each, one thread."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    plaintext = os.urandom(PLAINTEXT_BYTES)
    encrypt, urandom = aead.encrypt, os.urandom
    for _ in range(1000):  # warm-up
        encrypt(urandom(12), plaintext, None)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(1000):
            encrypt(urandom(12), plaintext, None)
        done += 1000
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


@dataclass(frozen=True)
class SealingRates:
    """Fields/s of two in-process batch loops over the same parsed fields, their batches alternating."""

    service: float  # the server's own batch sealing (``Sealer.seal_many``)
    bare: float  # bench.floor's loop (``FloorKMS.seal``): one AEAD call per item, nothing checked

    @property
    def checks_us(self) -> float:
        """What the service's loop adds per field: reading and checking field, context and size, the header."""
        return (1 / self.service - 1 / self.bare) * 1e6


def sealing_rates(seconds: float, batch_size: int = 1000) -> SealingRates:
    """The EncryptBatch load's fields, parsed from the wire as the server parses them, through the server's
    batch sealing and through the bare servicer's loop in turn: the batch path without gRPC, and how much of it
    the service's per-item checks are."""
    key = DataKey("bench.one", 1, Algorithm.AES_256_GCM, os.urandom(32))
    request = kms_pb2.EncryptBatchRequest(
        items=[
            kms_pb2.EncryptItem(field=FIELD, plaintext=os.urandom(PLAINTEXT_BYTES), context=CONTEXT)
            for _ in range(batch_size)
        ]
    ).SerializeToString()
    bare = FloorKMS()

    def service() -> None:
        Sealer(key).seal_many(kms_pb2.EncryptBatchRequest.FromString(request).items, 1 << 16)

    def floor() -> None:
        bare.seal(kms_pb2.EncryptBatchRequest.FromString(request).items)

    spent = {service: 0.0, floor: 0.0}
    for once in spent:
        once()  # warm-up
    batches = 0
    deadline = time.perf_counter() + seconds
    while batches == 0 or time.perf_counter() < deadline:
        for once in (service, floor) if batches % 2 == 0 else (floor, service):  # neither always goes first
            started = time.perf_counter()
            once()
            spent[once] += time.perf_counter() - started
        batches += 1
    return SealingRates(batches * batch_size / spent[service], batches * batch_size / spent[floor])


@dataclass(frozen=True)
class EnvelopeResult:
    fields_per_s: float  # the bulk path, ``await seal_many(...)`` of 1,000 values: 32-byte values, one caller task
    sync_per_s: float  # ``seal_sync(...) or await seal(...)`` per value, timed alike
    awaited_per_s: float  # ``await seal(...)`` per value, the one-at-a-time path, timed alike
    aesgcm_per_s: float  # in-process AES-GCM (as aesgcm_rate), timed in chunks interleaved with the sealing
    rpcs_per_100k: int  # RPCs while sealing 100,000 values in steady state (the second 100,000 of a fresh one)
    rpcs_first_100k: int  # RPCs a fresh encryptor made for its first 100,000 values (a key asked ahead included)
    data_keys_implied: int  # data keys 100,000 values need under the cache limits used


def envelope_rate(
    target: str,
    token: str,
    key_name: str,
    seconds: float,
    max_messages: int,
    fields: int = 100_000,
    prefetch: bool = True,
) -> EnvelopeResult:
    """The client library's envelope encryptor against the server: the RPCs a fresh encryptor makes for its first
    ``fields`` values and for the next ``fields`` (steady state), then its sealing rates over a time-bound loop
    (data-key changes and their RPCs included), in chunks of 1,000 values alternating with 1,000 in-process
    AES-GCM encryptions, so that the machine's slow and fast spells weigh on every rate alike. The bulk path is
    what a caller sealing many values uses: ``seal_many``, one await per 1,000 values (more only at a change of
    data key); beside it ``seal_sync`` (no await while the cached key may seal) and ``await seal`` per value.
    The order of the three rotates, so that the chunk where a data key changes (and its RPC waits) falls on each
    of them alike."""
    limits = CacheLimits(max_age=3600, max_messages=max_messages)
    aead_encrypt, urandom = AESGCM(AESGCM.generate_key(bit_length=256)).encrypt, os.urandom

    async def run() -> EnvelopeResult:
        async with KmsClient(target, token, deadline=30) as client:
            encryptor = EnvelopeEncryptor(
                client, key_name=key_name, key_context={"service": "bench"}, limits=limits, prefetch=prefetch
            )
            value = os.urandom(PLAINTEXT_BYTES)
            values = [value] * 1000
            seal, seal_sync, seal_many = encryptor.seal, encryptor.seal_sync, encryptor.seal_many

            async def bulk() -> None:
                await seal_many(FIELD, values, CONTEXT)

            async def sync() -> None:
                for _ in range(1000):
                    seal_sync(FIELD, value, CONTEXT) or await seal(FIELD, value, CONTEXT)

            async def awaited() -> None:
                for _ in range(1000):
                    await seal(FIELD, value, CONTEXT)

            async def rpcs_for_fields() -> int:
                """The RPCs made while sealing ``fields`` values. Every 1,000 values the loop yields to the event
                loop, as a service does between requests (so the background fetch of the next data key can run)."""
                before = client.calls
                for _ in range(0, fields, 1000):
                    await bulk()
                    await asyncio.sleep(0)
                return client.calls - before

            first = await rpcs_for_fields()
            steady = await rpcs_for_fields()
            ways = [bulk, sync, awaited]
            spent = dict.fromkeys(ways, 0.0)
            done, aes = 0, 0.0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline or done == 0:
                started = time.perf_counter()
                for _ in range(1000):
                    aead_encrypt(urandom(12), value, None)
                aes += time.perf_counter() - started
                for way in ways:
                    started = time.perf_counter()
                    await way()
                    await asyncio.sleep(0)
                    spent[way] += time.perf_counter() - started
                ways.append(ways.pop(0))
                done += 1000
            return EnvelopeResult(
                done / spent[bulk],
                done / spent[sync],
                done / spent[awaited],
                done / aes,
                steady,
                first,
                -(-fields // max_messages),
            )

    return asyncio.run(run())


def argon2_hash_times(params: Argon2Params, seconds: float, min_samples: int, max_samples: int = 200) -> Samples:
    """One Argon2id hash with the server's parameters, through the server's own hasher (worker thread)."""
    hasher = Argon2PasswordHasher(params)
    loop = asyncio.new_event_loop()

    def hash_once() -> None:
        loop.run_until_complete(hasher.hash(PASSWORD))

    try:
        hash_once()  # warm-up
        return _sample(hash_once, seconds, min_samples, max_samples)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


# ---- sequential calls ---------------------------------------------------------------------------------


def warm_up_kms(target: str, token: str, key_names: tuple[str, ...] = ("",), calls: int = 20) -> None:
    """A few Encrypts per key so the credential and the active keys are cached before anything is measured."""
    with grpc.insecure_channel(target) as channel:
        kms = kms_pb2_grpc.KMSStub(channel)
        for name in key_names:
            request = kms_pb2.EncryptRequest(
                key_name=name, field=FIELD, plaintext=os.urandom(PLAINTEXT_BYTES), context=CONTEXT
            )
            for _ in range(calls):
                kms.Encrypt(request, metadata=(("authorization", f"Bearer {token}"),), timeout=30)


def create_keys(target: str, token: str, names: tuple[str, ...]) -> None:
    """Named keys for the benchmark, through the admin RPC."""
    with grpc.insecure_channel(target) as channel:
        kms = kms_pb2_grpc.KMSStub(channel)
        for name in names:
            kms.CreateKey(
                kms_pb2.CreateKeyRequest(name=name), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )


def register_user(target: str, username: str) -> None:
    with grpc.insecure_channel(target) as channel:
        auth_pb2_grpc.AuthStub(channel).Register(
            auth_pb2.RegisterRequest(username=username, password=PASSWORD, email=f"{username}@x.io"), timeout=60
        )


def login_times(target: str, username: str, seconds: float, min_samples: int, max_samples: int = 500) -> Samples:
    """Sequential logins of one user, one call in flight, after two unmeasured ones."""
    with grpc.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        request = auth_pb2.LoginRequest(username=username, password=PASSWORD)

        def login() -> None:
            reply = auth.Login(request, timeout=60)
            if not reply.access_token:
                raise RuntimeError("Login returned no access token")

        login()
        login()
        return _sample(login, seconds, min_samples, max_samples)


# ---- server state -------------------------------------------------------------------------------------


def scrape(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


def db_queries(server: ServerProcess) -> float:
    """``db_queries_total`` summed over outcomes (with several workers: over all of them)."""
    return sum(v for k, v in scrape(server).items() if k == "db_queries_total" or k.startswith("db_queries_total{"))


def wait_workers_serving(server: ServerProcess, workers: int, timeout: float = 90) -> None:
    """With ``--workers N`` the health check answers once one worker serves; wait for all N."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.logs()[-4000:]}")
        serving = server.messages().count("serving")
        if serving >= workers:
            return
        time.sleep(0.2)
    raise RuntimeError(f"fewer than {workers} workers serving after {timeout}s:\n{server.logs()[-4000:]}")


_PID = re.compile(r"pid=(\d+)")


def connections_by_pid(port: int) -> dict[int, int]:
    """Established TCP connections on the server side of ``port``, per owning process (via ``ss``)."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    counts: Counter[int] = Counter()
    for line in out.splitlines():
        match = _PID.search(line)
        if match:
            counts[int(match.group(1))] += 1
    return dict(counts)


class ConnectionSampler:
    """Samples ``connections_by_pid`` in a thread; keeps the sample with the most connections."""

    def __init__(self, port: int, interval: float = 0.5) -> None:
        self._port = port
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-ss", daemon=True)
        self.best: dict[int, int] = {}

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            sample = connections_by_pid(self._port)
            if sum(sample.values()) > sum(self.best.values()):
                self.best = sample

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# ---- server CPU -----------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    total = 0
    for each in _descendants(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle/iowait) since boot (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


class CpuSampler:
    """Samples the server process tree's CPU time (and the whole machine's) in a thread; ``cores(start, end)``
    is the tree's mean CPU use (1.0 = one busy core) between two wall-clock times inside the sampled span,
    ``machine_cores`` the same for every process on the machine."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)
        self.samples: list[tuple[float, float, float]] = []

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), tree_cpu_seconds(self._pid), machine_busy_seconds()))
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def cores(self, start: float, end: float, column: int = 1) -> float:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan")
        return (inside[-1][column] - inside[0][column]) / (inside[-1][0] - inside[0][0])

    def machine_cores(self, start: float, end: float) -> float:
        return self.cores(start, end, column=2)
