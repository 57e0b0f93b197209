"""`python -m bench [--seconds S] [--rounds N] [--concurrency C] [--quick] [--output PATH]`.

One run, one fresh database and Redis prefix, one credential; everything below is measured in this run:

1. KMS Encrypt RPC rate (on one named key) ÷ grpc.health.v1 Check RPC rate on the same server, same client
   design; five alternating rounds of each (``--rounds``; one with --quick), each rate the mean of its rounds
   (the machine's slow and fast spells differ by 20% from one round to the next here). Beside it,
   Encrypt spread over 100 named keys (successive calls on different keys) ÷ Encrypt on one key.
2. EncryptBatch (1,000 × 32-byte fields) fields/s ÷ in-process AES-GCM encryptions/s; beside it the same
   load against ``bench.floor``, a servicer doing nothing but the AEAD calls, as a yardstick.
3. PostgreSQL statements per Encrypt in steady state (``db_queries_total`` around the Encrypt run).
4. Login p50 (sequential) ÷ one in-process Argon2id hash with the configured parameters; Register and
   Login rates with concurrent clients.
5. Encrypt rate with 1 worker (from 1.) and with ``--workers 2`` (a fresh server start); EncryptBatch with
   ``--workers 2`` too, for comparison with 2. (the baseline there stays one core's AES-GCM rate).
6. HTTP/JSON on the same server as 1.-4.: Encrypt rate ÷ gRPC Encrypt rate and sequential Login p50 ÷ gRPC
   Login p50, in alternating rounds (``bench.http_load``).
7. Server CPU per RPC, read from /proc for the server process tree alone (so it holds while the load clients
   share the cores): health Check, Encrypt and EncryptBatch per field, beside a bare grpc.aio servicer's Check
   (``bench.floor``, its rounds alternating with the server's, first and second in turn); beside Encrypt, the
   bare servicer's Encrypt (one AEAD call; the same request, reply and metadata on the wire); beside
   EncryptBatch, the bare servicer's and its gRPC transport alone (no AEAD), and the bare servicer's plus what
   the service's per-item checks add in process (``bench.measure.sealing_rates``: the server's batch sealing
   and the bare servicer's loop on the same parsed fields, in turn): what a field would cost if those checks
   were all the server added.
8. The client library's envelope encryptor (local AES-GCM under a cached data key): fields/s of its bulk path
   (``seal_many`` of 1,000 values) ÷ in-process AES-GCM/s (1,000-value chunks of each, alternating), beside it
   ``seal_sync`` and ``await seal`` per value; its RPCs per 100,000 fields, beside EncryptBatch.

Goals are reported, not enforced: the exit status is 0 whenever the measurements ran, 1 on errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.env import Backend, BenchError, new_backend
from bench.floor import TRANSPORT_ONLY
from bench.http_load import HttpLoadSpec, http_login_times
from bench.http_load import _client as http_client
from bench.load import LoadResult, LoadSpec, run_load
from bench.measure import (
    ConnectionSampler,
    CpuSampler,
    Samples,
    aesgcm_rate,
    argon2_hash_times,
    create_keys,
    db_queries,
    envelope_rate,
    login_times,
    register_user,
    sealing_rates,
    wait_workers_serving,
    warm_up_kms,
)
from bench.report import Report, Row, at_least, at_most
from internal.biz.password import Argon2Params
from internal.conf.config import load_config
from tests.e2e.harness import ROOT, ServerProcess, free_port, start_server

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
# Per-call statements would show as ≥ 1 per call (or 1/(rate·ttl) for a cache); the periodic background
# statements (key re-check, count flush, credential-cache refresh: a few per 5 s) stay far below this.
QUERIES_PER_CALL_BOUND = 0.01
ONE_KEY = "bench.one"
SPREAD_KEYS = tuple(f"bench.spread.k{i:03d}" for i in range(100))
ENVELOPE_KEY = "bench.envelope"
# The envelope encryptor's cache limit in the benchmark: a new data key every 10,000 values.
ENVELOPE_MAX_MESSAGES = 10_000
BATCH_SIZE = 1000


@dataclass(frozen=True)
class Settings:
    seconds: float
    warmup: float
    concurrency: int
    auth_concurrency: int
    batch_concurrency: int
    processes: int
    channels: int
    min_samples: int
    rounds: int  # alternating Check/Encrypt rounds
    quick: bool


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement (default 5)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="KMS/health calls in flight over both client processes (default 32)")
    parser.add_argument("--auth-concurrency", type=int, default=8,
                        help="concurrent Register/Login clients (default 8)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds of each measurement that has them (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny durations, for a smoke test")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"also write the results as JSON (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.seconds <= 0 or args.concurrency < 1 or args.auth_concurrency < 1 or args.rounds < 1:
        raise BenchError("--seconds, --rounds, --concurrency and --auth-concurrency must be positive")
    seconds = min(args.seconds, 0.5) if args.quick else args.seconds
    return Settings(
        seconds=seconds,
        warmup=0.2 if args.quick else min(1.0, max(0.2, seconds / 5)),
        concurrency=args.concurrency,
        auth_concurrency=args.auth_concurrency,
        batch_concurrency=min(args.concurrency, 4),
        processes=2,
        channels=4,
        min_samples=3 if args.quick else 10,
        rounds=1 if args.quick else args.rounds,
        quick=args.quick,
    )


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Run:
    """The servers of one run; every one started is terminated by ``stop_all``."""

    def __init__(self, settings: Settings, backend: Backend, log_dir: Path) -> None:
        self.s = settings
        self.backend = backend
        self.log_dir = log_dir
        self.servers: list[ServerProcess] = []
        self.labels: dict[int, str] = {}  # server pid → what it is, for the CPU table
        self.report = Report()

    def start(self, workers: int = 1) -> ServerProcess:
        args = ("--workers", str(workers)) if workers > 1 else ()
        server = start_server(self.log_dir, self.backend.server_env, args)
        self.servers.append(server)
        self.labels[server.proc.pid] = "1 worker" if workers == 1 else f"--workers {workers}"
        server.wait_serving(timeout=120)
        if workers > 1:
            wait_workers_serving(server, workers)
        return server

    def start_floor(self) -> ServerProcess:
        """The bare EncryptBatch servicer of ``bench.floor``, loaded like the real server."""
        port = free_port()
        log_path = self.log_dir / f"floor-{port}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "bench.floor", str(port)], cwd=ROOT,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        server = ServerProcess(proc, port, 0, log_path)
        self.servers.append(server)
        self.labels[proc.pid] = "bench.floor"
        server.wait_serving(timeout=60)
        return server

    def stop(self, server: ServerProcess) -> None:
        code = server.terminate()
        self.servers.remove(server)
        if code != 0:
            raise BenchError(f"server exited with {code} at SIGTERM; log: {server.log_path}")

    def stop_all(self) -> list[str]:
        problems = []
        for server in list(self.servers):
            try:
                server.terminate()
            except Exception as exc:  # keep terminating the others
                problems.append(f"server pid {server.proc.pid}: {exc}")
            finally:
                if server.proc.poll() is None:
                    server.proc.kill()
                    server.proc.wait()
        self.servers.clear()
        return problems

    def load(self, server: ServerProcess, operation: str, concurrency: int, **extra: Any) -> LoadResult:
        spec = LoadSpec(
            target=server.target,
            operation=operation,
            concurrency=concurrency,
            seconds=self.s.seconds,
            warmup=self.s.warmup,
            processes=self.s.processes,
            channels=self.s.channels,
            **extra,
        )
        with CpuSampler(server.proc.pid) as cpu:
            result = run_load(spec)
        result.server_cpu = cpu.cores(*result.window)
        other = cpu.machine_cores(*result.window) - result.server_cpu - result.client_cpu
        _say(
            f"{operation}: {result.rate:,.1f} calls/s ({result.calls} calls, {concurrency} in flight); "
            f"CPU cores busy: server {result.server_cpu:.2f}, clients {result.client_cpu:.2f}, other {other:.2f}"
        )
        self.report.cpu.append((self.phase(operation, server), result.server_cpu, result.client_cpu, other))
        return result

    def load_http(self, server: ServerProcess, concurrency: int, token: str) -> LoadResult:
        """Encrypt over HTTP/JSON, the same closed loop as ``load``, one keep-alive connection per task."""
        spec = HttpLoadSpec(server.http_port, "http_encrypt", concurrency, self.s.seconds, self.s.warmup, token,
                            self.s.processes)
        with CpuSampler(server.proc.pid) as cpu:
            result = run_load(spec, client=http_client)  # type: ignore[arg-type]
        result.server_cpu = cpu.cores(*result.window)
        other = cpu.machine_cores(*result.window) - result.server_cpu - result.client_cpu
        _say(f"http_encrypt: {result.rate:,.1f} calls/s; CPU cores busy: server {result.server_cpu:.2f}, "
             f"clients {result.client_cpu:.2f}, other {other:.2f}")
        self.report.cpu.append((self.phase("http_encrypt", server), result.server_cpu, result.client_cpu, other))
        return result

    def phase(self, operation: str, server: ServerProcess) -> str:
        return f"{operation} ({self.labels[server.proc.pid]})"


def _mean(results: list[LoadResult]) -> LoadResult:
    """Rounds of one operation as one result: rates averaged, calls summed, window from first to last."""
    n = len(results)
    return dataclasses.replace(
        results[0],
        calls=sum(r.calls for r in results),
        items=sum(r.items for r in results),
        rate=sum(r.rate for r in results) / n,
        item_rate=sum(r.item_rate for r in results) / n,
        total_calls=sum(r.total_calls for r in results),
        window=(results[0].window[0], results[-1].window[1]),
        client_cpu=sum(r.client_cpu for r in results) / n,
        server_cpu=sum(r.server_cpu for r in results) / n,
    )


def _cpu_per_call_us(results: list[LoadResult], per_item: bool = False) -> float:
    """Server CPU µs per call (or per item), the mean over rounds of server CPU cores ÷ rate."""
    values = [r.server_cpu / (r.item_rate if per_item else r.rate) * 1e6 for r in results]
    return sum(values) / len(values)


def _cpu_ratios(over: list[LoadResult], under: list[LoadResult]) -> str:
    """CPU per call of ``over`` ÷ that of ``under``, round by round."""
    return ", ".join(f"{_cpu_per_call_us([o]) / _cpu_per_call_us([u]):.2f}" for o, u in zip(over, under, strict=True))


def _in_turn(index: int, first: ServerProcess, second: ServerProcess) -> tuple[ServerProcess, ServerProcess]:
    """The two servers in round ``index``'s order: which goes first swaps every round, so neither always follows
    the same measurement."""
    return (first, second) if index % 2 == 0 else (second, first)


def _measure(run: Run, token: str) -> None:
    s, report, details = run.s, run.report, run.report.details
    _say("starting the server (1 worker)")
    server = run.start()
    create_keys(server.target, token, (ONE_KEY, ENVELOPE_KEY, *SPREAD_KEYS))
    warm_up_kms(server.target, token, (ONE_KEY, *SPREAD_KEYS))

    # 1 + 3: Encrypt vs health Check, and statements per Encrypt around the Encrypt run.
    _say(f"idle server: statements for {min(s.seconds, 5):g} s")
    idle_started, idle_before = time.monotonic(), db_queries(server)
    time.sleep(min(s.seconds, 5))
    idle_rate = (db_queries(server) - idle_before) / (time.monotonic() - idle_started)
    # Check and Encrypt alternate, so that a slow spell of the machine (the clients share its cores) weighs on
    # both rates alike; each rate is the mean over its rounds.
    # The bare servicer's Check (bench.floor) alternates with them too: its CPU per call is the yardstick of the
    # server's, and both must meet the same spells of the machine.
    _say("the bare servicer (bench.floor), beside the server")
    floor_server = run.start_floor()
    checks: list[LoadResult] = []
    floor_checks: list[LoadResult] = []
    encrypts: list[LoadResult] = []
    floor_encrypts: list[LoadResult] = []
    spreads: list[LoadResult] = []
    statements = 0.0
    busy_seconds = 0.0
    for index in range(s.rounds):
        for target in _in_turn(index, server, floor_server):
            (checks if target is server else floor_checks).append(run.load(target, "check", s.concurrency))
        for target in _in_turn(index, floor_server, server):
            if target is floor_server:
                floor_encrypts.append(run.load(floor_server, "encrypt", s.concurrency, token=token))
            else:
                busy_started, before = time.monotonic(), db_queries(server)
                encrypts.append(run.load(server, "encrypt", s.concurrency, token=token, key_names=(ONE_KEY,)))
                statements += db_queries(server) - before
                busy_seconds += time.monotonic() - busy_started
        spreads.append(run.load(server, "encrypt", s.concurrency, token=token, key_names=SPREAD_KEYS))
    check, encrypt, spread_keys = _mean(checks), _mean(encrypts), _mean(spreads)
    busy_rate = statements / busy_seconds
    per_call = statements / encrypt.total_calls
    details["check"] = asdict(check) | {"rounds": [c.rate for c in checks]}
    details["encrypt"] = asdict(encrypt) | {"rounds": [e.rate for e in encrypts]}
    details["encrypt_100_keys"] = asdict(spread_keys) | {"rounds": [e.rate for e in spreads]}
    details["db_queries"] = {"statements": statements, "encrypt_calls": encrypt.total_calls,
                             "per_second_during_encrypt": busy_rate, "per_second_idle": idle_rate}

    # 2: EncryptBatch vs in-process AES-GCM, in rounds alternating with the bare servicer's EncryptBatch, as
    # Check and Encrypt do.
    _say("EncryptBatch: the server and the bare servicer (bench.floor), alternating")
    batches: list[LoadResult] = []
    floor_batches: list[LoadResult] = []
    for index in range(s.rounds):
        for target in _in_turn(index, server, floor_server):
            if target is server:
                batches.append(run.load(server, "batch", s.batch_concurrency, token=token, batch_size=BATCH_SIZE,
                                        key_names=(ONE_KEY,)))
            else:
                floor_batches.append(run.load(floor_server, "batch", s.batch_concurrency, token=token,
                                              batch_size=BATCH_SIZE))
    batch, floor = _mean(batches), _mean(floor_batches)
    details["batch"] = asdict(batch) | {"item_rounds": [b.item_rate for b in batches]}
    _say("in-process AES-GCM and batch sealing")
    aes = aesgcm_rate(s.seconds)
    sealing = sealing_rates(s.seconds)
    _say("the bare servicer (bench.floor): EncryptBatch's transport alone")
    transport = run.load(floor_server, "batch", s.batch_concurrency, token=token, batch_size=BATCH_SIZE,
                         key_names=(TRANSPORT_ONLY,))
    run.stop(floor_server)
    details["batch_floor"] = asdict(floor) | {"item_rounds": [b.item_rate for b in floor_batches]}
    details["batch_transport_only"] = asdict(transport)
    details["check_floor"] = asdict(_mean(floor_checks)) | {"rounds": [c.rate for c in floor_checks]}
    details["encrypt_floor"] = asdict(_mean(floor_encrypts)) | {"rounds": [e.rate for e in floor_encrypts]}

    # 6: server CPU per RPC.
    cpu_us = {
        "bare_check": _cpu_per_call_us(floor_checks),
        "check": _cpu_per_call_us(checks),
        "encrypt": _cpu_per_call_us(encrypts),
        "bare_encrypt": _cpu_per_call_us(floor_encrypts),
        "batch_field": _cpu_per_call_us(batches, per_item=True),
        "bare_batch_field": _cpu_per_call_us(floor_batches, per_item=True),
        "transport_batch_field": _cpu_per_call_us([transport], per_item=True),
    }
    details["server_cpu_us"] = cpu_us

    # 7: the client library's envelope encryptor, in rounds alternating with in-process AES-GCM.
    _say("the client library's envelope encryptor (local AES-GCM, cached data keys)")
    envelope_rounds, no_prefetch_rounds = [], []
    for _ in range(s.rounds):
        envelope_rounds.append(envelope_rate(server.target, token, ENVELOPE_KEY, s.seconds / 2, ENVELOPE_MAX_MESSAGES))
        no_prefetch_rounds.append(
            envelope_rate(server.target, token, ENVELOPE_KEY, s.seconds / 2, ENVELOPE_MAX_MESSAGES, prefetch=False)
        )
    envelope_per_s = sum(e.fields_per_s for e in envelope_rounds) / len(envelope_rounds)
    envelope_ratio = sum(e.fields_per_s / e.aesgcm_per_s for e in envelope_rounds) / len(envelope_rounds)
    awaited_ratio = sum(e.awaited_per_s / e.aesgcm_per_s for e in envelope_rounds) / len(envelope_rounds)
    sync_ratio = sum(e.sync_per_s / e.aesgcm_per_s for e in envelope_rounds) / len(envelope_rounds)
    no_prefetch_ratio = sum(e.fields_per_s / e.aesgcm_per_s for e in no_prefetch_rounds) / len(no_prefetch_rounds)
    envelope_rpcs = max(e.rpcs_per_100k for e in envelope_rounds)
    first_rpcs = max(e.rpcs_first_100k for e in envelope_rounds)
    implied = envelope_rounds[0].data_keys_implied
    details["envelope"] = {
        "fields_per_s_rounds": [e.fields_per_s for e in envelope_rounds],
        "sync_per_s_rounds": [e.sync_per_s for e in envelope_rounds],
        "awaited_per_s_rounds": [e.awaited_per_s for e in envelope_rounds],
        "aesgcm_per_s_rounds": [e.aesgcm_per_s for e in envelope_rounds],
        "rpcs_per_100k_fields": [e.rpcs_per_100k for e in envelope_rounds],
        "rpcs_first_100k_fields": [e.rpcs_first_100k for e in envelope_rounds],
        "no_prefetch_fields_per_s_rounds": [e.fields_per_s for e in no_prefetch_rounds],
        "no_prefetch_rpcs_per_100k_fields": [e.rpcs_per_100k for e in no_prefetch_rounds],
        "max_messages_per_data_key": ENVELOPE_MAX_MESSAGES,
    }

    # 4: Login p50 vs one Argon2id hash; Register and Login rates.
    tag = uuid.uuid4().hex[:6]
    solo = f"bsolo{tag}"
    register_user(server.target, solo)
    _say("sequential logins")
    before = db_queries(server)
    logins = login_times(server.target, solo, s.seconds, s.min_samples)
    login_statements = (db_queries(server) - before) / (len(logins.values) + 2)  # + 2 unmeasured warm-ups
    params = Argon2Params.from_conf(load_config(ROOT / "configs", environ=server.env).auth)
    _say(f"in-process Argon2id {params}")
    hashes = argon2_hash_times(params, s.seconds, s.min_samples)
    details["login_sequential"] = {"samples": len(logins.values), "p50_ms": logins.p50 * 1e3,
                                   "p90_ms": logins.p90 * 1e3, "db_statements_per_login": login_statements}
    details["argon2_in_process"] = {"samples": len(hashes.values), "p50_ms": hashes.p50 * 1e3,
                                    "p90_ms": hashes.p90 * 1e3, "params": asdict(params)}
    register = run.load(server, "register", s.auth_concurrency, tag=tag)
    login = run.load(server, "login", s.auth_concurrency, users=tuple(register.registered))
    details["register"] = asdict(register) | {"registered": len(register.registered)}
    details["login"] = asdict(login)
    http = _measure_http(run, server, token, solo)
    run.stop(server)

    # 5: a fresh start with two workers.
    _say("starting the server (--workers 2)")
    server2 = run.start(workers=2)
    warm_up_kms(server2.target, token, (ONE_KEY,), calls=50)
    with ConnectionSampler(server2.grpc_port) as sampler:
        encrypt2 = run.load(server2, "encrypt", s.concurrency, token=token, key_names=(ONE_KEY,))
    # Batches need more calls in flight to keep two workers busy (each call holds a worker's loop ~4 ms).
    batch2 = run.load(server2, "batch", 2 * s.batch_concurrency, token=token, batch_size=1000, key_names=(ONE_KEY,))
    details["batch_2_workers"] = asdict(batch2)
    details["encrypt_2_workers"] = asdict(encrypt2) | {
        "connections_per_worker": sorted(sampler.best.values(), reverse=True)
    }
    run.stop(server2)

    report.add(Row("encrypt_check_ratio", "1. Encrypt rate ÷ health Check rate", encrypt.rate / check.rate,
                   goal=at_least(0.8)))
    report.add(Row("encrypt_rps", "   Encrypt RPC rate (one named key)", encrypt.rate, "/s"))
    report.add(Row("encrypt_keys_spread_ratio", "   Encrypt over 100 keys ÷ Encrypt on one key",
                   spread_keys.rate / encrypt.rate, goal=at_least(0.9)))
    report.add(Row("check_rps", "   health Check RPC rate", check.rate, "/s"))
    report.add(Row("batch_aesgcm_ratio", "2. EncryptBatch fields/s ÷ in-process AES-GCM/s", batch.item_rate / aes,
                   goal=at_least(0.5), digits=3))
    report.add(Row("batch_fields_per_s", "   EncryptBatch (1,000 × 32 B) throughput", batch.item_rate, "fields/s"))
    report.add(Row("aesgcm_per_s", "   in-process AES-GCM (32 B, fresh nonce)", aes, "enc/s"))
    report.add(Row("sealer_per_s", "   in-process batch sealing, no gRPC (same fields)", sealing.service,
                   "fields/s"))
    report.add(Row("batch_floor_aesgcm_ratio", "   bare CPython EncryptBatch servicer ÷ AES-GCM (bench.floor)",
                   floor.item_rate / aes, digits=3))
    report.add(Row("db_queries_per_encrypt", "3. DB statements per Encrypt (steady state)", per_call,
                   goal=at_most(QUERIES_PER_CALL_BOUND, f"0 (≤ {QUERIES_PER_CALL_BOUND:g})"), digits=5))
    report.add(Row("login_argon2_ratio", "4. Login p50 ÷ in-process Argon2id hash", logins.p50 / hashes.p50,
                   goal=at_most(1.3)))
    report.add(Row("login_p50_ms", "   Login p50 (sequential)", logins.p50 * 1e3, "ms", digits=1))
    report.add(Row("argon2_hash_ms", "   Argon2id hash p50 (in-process)", hashes.p50 * 1e3, "ms", digits=1))
    report.add(Row("register_per_s", f"   Register rate ({s.auth_concurrency} clients)", register.rate, "users/s",
                   digits=1))
    report.add(Row("login_per_s", f"   Login rate ({s.auth_concurrency} clients)", login.rate, "users/s", digits=1))
    report.add(Row("encrypt_rps_1_worker", "5. Encrypt rate, 1 worker", encrypt.rate, "/s"))
    report.add(Row("encrypt_rps_2_workers", "   Encrypt rate, --workers 2", encrypt2.rate, "/s"))
    report.add(Row("workers_2_1_ratio", "   2 workers ÷ 1 worker", encrypt2.rate / encrypt.rate))
    report.add(Row("batch_fields_per_s_2_workers", "   EncryptBatch, --workers 2", batch2.item_rate, "fields/s"))
    report.add(
        Row("batch_aesgcm_ratio_2_workers", "   EncryptBatch --workers 2 ÷ in-process AES-GCM (one core)",
            batch2.item_rate / aes, digits=3)
    )
    report.add(Row("http_grpc_encrypt_ratio", "6. HTTP/JSON Encrypt rate ÷ gRPC Encrypt rate", http["encrypt_ratio"],
                   goal=at_least(0.7)))
    report.add(Row("http_encrypt_rps", "   HTTP/JSON Encrypt rate", http["http_encrypt_rps"], "/s"))
    report.add(Row("grpc_encrypt_rps_beside_http", "   gRPC Encrypt rate (rounds alternating with HTTP)",
                   http["grpc_encrypt_rps"], "/s"))
    report.add(Row("http_grpc_login_p50_ratio", "   HTTP/JSON Login p50 ÷ gRPC Login p50", http["login_ratio"],
                   goal=at_most(1.1)))
    report.add(Row("http_login_p50_ms", "   HTTP/JSON Login p50 (sequential)", http["http_login_p50_ms"], "ms",
                   digits=1))
    report.add(Row("grpc_login_p50_ms_beside_http", "   gRPC Login p50 (alternating with HTTP)",
                   http["grpc_login_p50_ms"], "ms", digits=1))
    report.add(Row("cpu_bare_check_us", "7. server CPU per bare grpc.aio Check (bench.floor)", cpu_us["bare_check"],
                   "µs", digits=0))
    report.add(Row("cpu_check_us", "   server CPU per health Check", cpu_us["check"], "µs", digits=0))
    report.add(Row("cpu_check_bare_ratio", "   Check CPU ÷ bare servicer's Check CPU",
                   cpu_us["check"] / cpu_us["bare_check"], goal=at_most(1.1)))
    report.add(Row("cpu_encrypt_us", "   server CPU per Encrypt", cpu_us["encrypt"], "µs", digits=0))
    report.add(Row("cpu_encrypt_check_ratio", "   Encrypt CPU ÷ Check CPU", cpu_us["encrypt"] / cpu_us["check"],
                   goal=at_most(1.3)))
    report.add(Row("cpu_bare_encrypt_us", "   server CPU per bare Encrypt (bench.floor: one AEAD call, no checks)",
                   cpu_us["bare_encrypt"], "µs", digits=0))
    report.add(Row("cpu_bare_encrypt_check_ratio", "   bare servicer's Encrypt CPU ÷ its Check CPU (transport)",
                   cpu_us["bare_encrypt"] / cpu_us["bare_check"]))
    report.add(Row("cpu_encrypt_bare_ratio", "   Encrypt CPU ÷ bare servicer's Encrypt CPU",
                   cpu_us["encrypt"] / cpu_us["bare_encrypt"]))
    report.add(Row("cpu_batch_field_us", f"   server CPU per EncryptBatch field ({BATCH_SIZE:,} × 32 B)",
                   cpu_us["batch_field"], "µs", goal=at_most(2.0)))
    report.add(Row("cpu_bare_batch_field_us", "   server CPU per field, bare EncryptBatch servicer (bench.floor)",
                   cpu_us["bare_batch_field"], "µs"))
    report.add(Row("cpu_batch_bare_ratio", "   EncryptBatch CPU per field ÷ the bare servicer's",
                   cpu_us["batch_field"] / cpu_us["bare_batch_field"]))
    report.add(Row("batch_checks_field_us", "   what the service's per-field checks add, in process (no gRPC)",
                   sealing.checks_us, "µs"))
    checked_floor = cpu_us["bare_batch_field"] + sealing.checks_us
    report.add(Row("cpu_batch_checked_floor_us", "   bare servicer per field + those checks (nothing else added)",
                   checked_floor, "µs"))
    report.add(Row("cpu_batch_checked_floor_ratio", "   EncryptBatch CPU per field ÷ that sum",
                   cpu_us["batch_field"] / checked_floor))
    report.add(Row("cpu_transport_batch_field_us", "   server CPU per field, gRPC transport alone (canned reply)",
                   cpu_us["transport_batch_field"], "µs"))
    report.add(Row("envelope_aesgcm_ratio", "8. envelope encryptor (bulk: seal_many) fields/s ÷ in-process AES-GCM/s",
                   envelope_ratio, goal=at_least(0.8)))
    report.add(Row("envelope_fields_per_s", "   envelope encryptor, seal_many (32 B, one task, local AES-GCM)",
                   envelope_per_s, "fields/s"))
    report.add(Row("envelope_sync_aesgcm_ratio", "   seal_sync per value (await at key changes only) ÷ AES-GCM",
                   sync_ratio))
    report.add(Row("envelope_awaited_aesgcm_ratio", "   `await seal` per value ÷ AES-GCM", awaited_ratio))
    report.add(Row("envelope_no_prefetch_aesgcm_ratio", "   seal_many, prefetch=False (waits at new keys) ÷ AES-GCM",
                   no_prefetch_ratio))
    report.add(Row("envelope_rpcs_per_100k", f"   its RPCs per 100,000 fields, steady ({ENVELOPE_MAX_MESSAGES:,}/key)",
                   envelope_rpcs, goal=at_most(implied, f"≤ {implied}"), digits=0))
    report.add(Row("envelope_rpcs_first_100k", "   its RPCs, a fresh encryptor's first 100,000 (+ key asked ahead)",
                   first_rpcs, digits=0))
    report.add(Row("batch_grpc_aesgcm_ratio", "   EncryptBatch over gRPC: fields/s ÷ in-process AES-GCM/s",
                   batch.item_rate / aes, digits=3))
    report.add(Row("batch_rpcs_per_100k", f"   EncryptBatch RPCs per 100,000 fields ({BATCH_SIZE:,} per call)",
                   100_000 / BATCH_SIZE, digits=0))
    report.notes.append(f"7: Check CPU ÷ bare Check CPU per round (alternating): {_cpu_ratios(checks, floor_checks)}")
    per_round = ", ".join(f"{e.rate / c.rate:.2f}" for c, e in zip(checks, encrypts, strict=True))
    report.notes.append(f"1: Encrypt ÷ Check per round (alternating): {per_round}")
    report.notes.append(
        f"7: Encrypt CPU ÷ Check CPU per round: {_cpu_ratios(encrypts, checks)}; the bare servicer's: "
        f"{_cpu_ratios(floor_encrypts, floor_checks)}"
    )
    per_field = ", ".join(f"{_cpu_per_call_us([b], per_item=True):.2f}" for b in batches)
    report.notes.append(
        f"7: EncryptBatch CPU µs per field per round: {per_field}; ÷ the bare servicer's (alternating): "
        f"{_cpu_ratios(batches, floor_batches)}"
    )
    report.notes.append(
        f"2: in-process batch sealing ÷ AES-GCM = {sealing.service / aes:.2f} (parse, envelope, AEAD; no gRPC, no "
        f"reply); the bare servicer's loop on the same parsed fields: {sealing.bare:,.0f} fields/s"
    )
    report.notes.append(
        f"2: EncryptBatch reaches {batch.item_rate / floor.item_rate:.2f} of the bare servicer's fields/s; the bare "
        f"servicer (one AEAD call per item, reply written as wire bytes; no checks) reaches "
        f"{floor.item_rate / aes:.2f} of AES-GCM"
    )
    report.notes.append(
        f"3: {statements:.0f} statements during {encrypt.total_calls} Encrypt calls: {busy_rate:.2f}/s, "
        f"idle server {idle_rate:.2f}/s (periodic background work, independent of the call rate)"
    )
    report.notes.append(
        f"4: Login p90 {logins.p90 * 1e3:.1f} ms, Argon2id p90 {hashes.p90 * 1e3:.1f} ms; "
        f"~{login_statements:.1f} DB statements per Login"
    )
    spread = details["encrypt_2_workers"]["connections_per_worker"]
    if spread:
        report.notes.append(f"5: client connections per worker with --workers 2: {spread}")
    report.notes.append(
        "7: CPU per call = the server process tree's CPU time (/proc/<pid>/stat, children included) over the "
        "measured window ÷ the calls completed in it; the load clients' CPU is not counted"
    )
    report.notes.append(
        "8: envelope encryptor ÷ AES-GCM (1,000-value chunks of each, alternating) per round: "
        f"{', '.join(f'{e.fields_per_s / e.aesgcm_per_s:.2f}' for e in envelope_rounds)} "
        f"(prefetch=False: {', '.join(f'{e.fields_per_s / e.aesgcm_per_s:.2f}' for e in no_prefetch_rounds)}"
        f"; its RPCs per 100,000 fields {max(e.rpcs_per_100k for e in no_prefetch_rounds)}); "
        f"EncryptBatch runs {s.batch_concurrency} calls in flight from {s.processes} client processes, the "
        "encryptor one task in the benchmark process"
    )


def _measure_http(run: Run, server: ServerProcess, token: str, username: str) -> dict[str, float]:
    """6: HTTP/JSON beside gRPC on one server, in alternating rounds, so a slow spell weighs on both alike."""
    s = run.s
    grpc_encrypts, http_encrypts = [], []
    for _ in range(s.rounds):
        grpc_encrypts.append(run.load(server, "encrypt", s.concurrency, token=token))
        http_encrypts.append(run.load_http(server, s.concurrency, token))
    _say("sequential logins, gRPC and HTTP/JSON alternating")
    grpc_logins: list[float] = []
    http_logins: list[float] = []
    for _ in range(s.rounds):
        grpc_logins += login_times(server.target, username, s.seconds / 2, s.min_samples).values
        http_logins += http_login_times(server.http_port, username, s.seconds / 2, s.min_samples).values
    grpc_encrypt, http_encrypt = _mean(grpc_encrypts), _mean(http_encrypts)
    grpc_p50, http_p50 = Samples(grpc_logins).p50, Samples(http_logins).p50
    run.report.details["http"] = {
        "grpc_encrypt": asdict(grpc_encrypt) | {"rounds": [r.rate for r in grpc_encrypts]},
        "http_encrypt": asdict(http_encrypt) | {"rounds": [r.rate for r in http_encrypts]},
        "grpc_login": {"samples": len(grpc_logins), "p50_ms": grpc_p50 * 1e3},
        "http_login": {"samples": len(http_logins), "p50_ms": http_p50 * 1e3},
    }
    per_round = ", ".join(f"{h.rate / g.rate:.2f}" for g, h in zip(grpc_encrypts, http_encrypts, strict=True))
    grpc_cost, http_cost = (1e3 * r.server_cpu / r.rate for r in (grpc_encrypt, http_encrypt))
    run.report.notes.append(
        f"6: HTTP ÷ gRPC Encrypt per round: {per_round}; server CPU s per 1,000 calls: gRPC {grpc_cost:.3f}, "
        f"HTTP {http_cost:.3f}"
    )
    return {
        "encrypt_ratio": http_encrypt.rate / grpc_encrypt.rate,
        "http_encrypt_rps": http_encrypt.rate,
        "grpc_encrypt_rps": grpc_encrypt.rate,
        "login_ratio": http_p50 / grpc_p50,
        "http_login_p50_ms": http_p50 * 1e3,
        "grpc_login_p50_ms": grpc_p50 * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="authkms-bench-"))
    extra_env = {
        "APP__AUTH__CAPTCHA_ENABLED": "false",
        "APP__AUTH__LOGIN_RATE_LIMIT": "1000000000",
        # The configured level (the harness defaults to DEBUG for tests).
        "APP__MONITORING__LOG_LEVEL": "INFO",
    }
    backend: Backend | None = None
    run: Run | None = None
    failed = True
    problems: list[str] = []
    started = time.monotonic()
    try:
        _say("preparing database and Redis")
        backend = new_backend(extra_env)
        _say(backend.describe())
        backend.cli("migrate", "up")
        token = backend.create_credential(
            f"bench-{backend.run_id}",
            "kms.encrypt,kms.decrypt,kms.datakey,kms.admin",
            f"default,{ONE_KEY},{ENVELOPE_KEY},bench.spread.*",
        )
        run = Run(settings, backend, log_dir)
        _measure(run, token)
        failed = False
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
    except Exception as exc:
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        if run is not None:
            problems += run.stop_all()
        if backend is not None:
            problems += backend.close()
    for problem in problems:
        print(f"bench: cleanup: {problem}", file=sys.stderr)
    if failed or run is None:
        print(f"bench: server logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)

    report = run.report
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "settings": asdict(settings),
        "backend": backend.describe() if backend else "",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.platform(),
    }
    print(report.table())
    print()
    print(report.cpu_table())
    for note in report.notes:
        print(f"note {note}")
    try:
        report.write(args.output, meta)
    except OSError as exc:
        print(f"bench: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    print(f"results written to {args.output}")
    return 0
