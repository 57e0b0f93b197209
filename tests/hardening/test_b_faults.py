"""Faults under load, each followed by the full invariant check: a replica SIGKILLed, Redis stopped and
restarted, PostgreSQL restarted, the CLI SIGKILLed in the middle of a key rotation and of maintenance."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz.kms import USERS_KEY
from internal.data.migrate import migrate_up
from internal.devenv.embedded import EmbeddedPostgres
from tests.e2e.harness import create_credential
from tests.hardening.cluster import (
    Cluster,
    PrivateRedis,
    cli_popen,
    health_status,
    server_env,
    sql,
    sql_poll,
    wait_all_serving,
)
from tests.hardening.invariants import check_invariants
from tests.hardening.load import Event, LoadOutcome, run_load
from tests.hardening.summary import SUMMARY
from tests.hardening.users_pii import all_pii_decrypts, seed_users, seeded_emails, users_key_version
from tests.hardening.workload import ATTEMPT_DEADLINE
from tests.helpers import admin_sql, with_database

# Errors a healthy service gives this workload on purpose (deliberate reuse and wrong passwords).
EXPECTED_REASONS = {"REFRESH_TOKEN_REUSED", "TOKEN_REVOKED", "INVALID_CREDENTIALS", "ACCOUNT_LOCKED", "RATE_LIMITED"}


def _unexpected(outcome: LoadOutcome, allowed: set[str]) -> Counter[str]:
    """Error answers other than the expected ones and ``allowed`` ("CODE REASON", reason may be empty).

    A retry answered "already done" (a Register retried after the replica that committed it died: USER_EXISTS)
    is expected: the workload counts those as ``ambiguous`` "<method> <reason> after retry"."""
    after_retry = outcome.counter("ambiguous")
    out: Counter[str] = Counter()
    for key, n in outcome.counter("reasons").items():
        method, code, *rest = key.split(" ")
        why = rest[0] if rest else ""
        if why in EXPECTED_REASONS or f"{code} {why}".strip() in allowed or code in allowed:
            continue
        if (n := n - after_retry[f"{method} {why} after retry"]) > 0:
            out[f"{method} {code} {why}"] += n
    return out


def _kms(target: str, credential: str) -> tuple[grpc.Channel, kms_pb2_grpc.KMSStub, tuple[tuple[str, str]]]:
    channel = grpc.insecure_channel(target)
    return channel, kms_pb2_grpc.KMSStub(channel), (("authorization", f"Bearer {credential}"),)


def test_sigkill_one_replica_during_load(cluster: Cluster, hardening_database: str, credential: str) -> None:
    victim: list[str] = []

    def kill() -> None:
        victim.append(cluster.kill(len(cluster.replicas) - 1).target)

    outcome = run_load(cluster, credential, duration=10.0, events=[Event(3.0, "SIGKILL replica", kill)], seed=2)
    unexpected = _unexpected(outcome, {"UNAVAILABLE"})
    transport = sum(n for k, n in outcome.counter("reasons").items() if k.split(" ")[1] == "UNAVAILABLE")
    retried_ok = sum(r.retried_ok for r in outcome.results)
    gave_up = outcome.counter("gave_up")
    cluster.start(1)  # a replacement, as an orchestrator would start one

    SUMMARY.load.append("during replica SIGKILL: " + outcome.describe())
    SUMMARY.faults.append(
        f"SIGKILL replica {victim[0]} at t=3 s under load: {transport} calls hit the dead replica "
        f"(UNAVAILABLE), {retried_ok} succeeded on a retry to another replica, {sum(gave_up.values())} given up; "
        f"2 survivors kept serving, replacement SERVING"
    )
    report = check_invariants(cluster, hardening_database, credential, outcome, "replica SIGKILL")
    assert not report.problems, report.problems
    assert not unexpected, unexpected
    assert not gave_up, gave_up
    assert transport > 0 and retried_ok > 0


def test_redis_stopped_and_restarted_during_load(
    cluster: Cluster, hardening_database: str, credential: str, private_redis: PrivateRedis
) -> None:
    marks: dict[str, float] = {}
    health_during: list[int] = []

    def stop() -> None:
        private_redis.stop()
        marks["stopped"] = time.time()

    def probe() -> None:
        health_during.extend(health_status(t) for t in cluster.targets)

    def restart() -> None:
        private_redis.start()
        marks["restarted"] = time.time()
        marks["recovered_in"] = wait_all_serving(cluster.targets, timeout=30)

    events = [Event(3.0, "stop redis", stop), Event(6.0, "probe health", probe), Event(8.0, "start redis", restart)]
    outcome = run_load(cluster, credential, duration=13.0, events=events, lock_after_load=True, seed=3)

    outage = [
        e for r in outcome.results for e in r.errors_timeline if marks["stopped"] <= e[0] <= marks["restarted"] + 1
    ]
    unavailable = [e for e in outage if e[2] == "UNAVAILABLE"]
    slowest = max((e[4] for e in unavailable), default=0.0)
    by_method = Counter(e[1] for e in unavailable)
    unexpected = _unexpected(outcome, {"UNAVAILABLE SERVICE_UNAVAILABLE"})
    SUMMARY.load.append("during Redis outage: " + outcome.describe())
    SUMMARY.faults.append(
        f"Redis stopped (SIGTERM) for {marks['restarted'] - marks['stopped']:.1f} s under load, new redis-server on "
        f"the same port: {len(unavailable)} RPCs answered UNAVAILABLE/SERVICE_UNAVAILABLE (slowest "
        f"{slowest * 1000:.0f} ms, deadline {ATTEMPT_DEADLINE:.0f} s; {dict(by_method)}), health NOT_SERVING during "
        f"the outage, all replicas SERVING {marks['recovered_in']:.1f} s after the restart, no revoked token back"
    )
    report = check_invariants(cluster, hardening_database, credential, outcome, "Redis restart")
    assert not report.problems, report.problems
    assert not unexpected, unexpected
    assert unavailable, "Redis outage went unnoticed"
    assert slowest < 5.0, f"an RPC took {slowest:.1f}s to report the outage"
    assert health_during and all(s == health_pb2.HealthCheckResponse.NOT_SERVING for s in health_during)


def test_sigkill_cli_in_the_middle_of_key_rotation(cluster: Cluster, hardening_database: str, credential: str) -> None:
    env = cluster.cli_env()
    # Time one undisturbed run: when its transaction commits (a new row appears) and when it exits.
    count_q = "SELECT count(*) FROM kms_data_keys WHERE key_name = 'default'"
    keys = sql(hardening_database, count_q.replace("count(*)", "count(*) AS n"))[0]["n"]
    began = time.monotonic()
    first = cli_popen(env, "kms", "rotate", "--reason", "timing")
    assert sql_poll(hardening_database, count_q, lambda n: n > keys, timeout=60, interval=0.005)
    commit_at = time.monotonic() - began
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    full = time.monotonic() - began

    rng = random.Random(7)
    channel, kms, md = _kms(cluster.targets[0], credential)
    sealed: list[tuple[bytes, bytes]] = []
    before_after: Counter[str] = Counter()
    kills = 10
    for i in range(kills):
        versions_before = sql(hardening_database, count_q.replace("count(*)", "count(*) AS n"))[0]["n"]
        proc = cli_popen(env, "kms", "rotate", "--reason", f"kill-{i}")
        # Around the commit: while the process starts, derives the root key, and inside the transaction.
        time.sleep(max(0.05, rng.uniform(commit_at - 0.3, commit_at + 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        versions_after = sql(hardening_database, count_q.replace("count(*)", "count(*) AS n"))[0]["n"]
        before_after["committed" if versions_after > versions_before else "killed before commit"] += 1
        active = sql(hardening_database, "SELECT key_name FROM kms_data_keys WHERE status = 'active'")
        assert sorted(r["key_name"] for r in active) == ["authkms.users", "default"], f"after kill {i}: {active}"
        plaintext = f"value-{i}".encode()
        reply = kms.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=plaintext), metadata=md, timeout=10)
        sealed.append((plaintext, reply.ciphertext))

    final = cli_popen(env, "kms", "rotate", "--reason", "after kills")
    _, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    rows = sql(
        hardening_database,
        "SELECT version, status, encrypted_key IS NULL AS gone FROM kms_data_keys WHERE key_name = 'default'",
    )
    versions = sorted(r["version"] for r in rows)
    assert versions == list(range(1, len(versions) + 1)), "key versions have gaps or duplicates"
    assert sum(r["status"] == "active" for r in rows) == 1
    assert not any(r["gone"] for r in rows)
    for target in cluster.targets:
        ch, stub, _ = _kms(target, credential)
        with ch:
            for plaintext, ciphertext in sealed:
                assert (
                    stub.Decrypt(
                        kms_pb2.DecryptRequest(ciphertext=ciphertext, field="f"), metadata=md, timeout=10
                    ).plaintext
                    == plaintext
                )
    channel.close()
    SUMMARY.faults.append(
        f"`kms rotate` CLI SIGKILLed {kills}x at random moments up to its commit ({commit_at:.2f} s of a "
        f"{full:.1f} s run): "
        f"{dict(before_after)}; always exactly one active version of default, versions 1..{versions[-1]} without gaps, "
        f"{len(sealed)} values sealed in between decrypt on all {len(cluster.targets)} replicas"
    )
    SUMMARY.invariants["'exactly one active version per key' checks"] += kills + 1
    SUMMARY.invariants["ciphertexts decrypted to their plaintext"] += len(sealed) * len(cluster.targets)


def test_sigkill_cli_in_the_middle_of_maintenance(cluster: Cluster, hardening_database: str, credential: str) -> None:
    """Users' PII lives under the reserved users' key: rotate that key, then move 2000 rows onto it with the CLI."""
    env = cluster.cli_env()
    seeded = seed_users(hardening_database, env, 2000)
    rotated = cli_popen(env, "kms", "rotate", "--key", USERS_KEY, "--reason", "before maintenance")
    out, err = rotated.communicate(timeout=60)
    assert rotated.returncode == 0, err
    active = users_key_version(hardening_database, env)
    assert f"key {USERS_KEY}: active version is now {active}" in out, out
    pending_q = f"SELECT count(*) FROM users WHERE pii_key_version < {active}"
    pending_before = sql(hardening_database, pending_q.replace("count(*)", "count(*) AS n"))[0]["n"]
    assert pending_before >= len(seeded)
    keys_before = sql(hardening_database, "SELECT count(*) AS n FROM kms_data_keys WHERE encrypted_key IS NOT NULL")

    proc = cli_popen(env, "kms", "maintenance", "--batch-size", "20")
    done_q = f"SELECT count(*) FROM users WHERE pii_key_version = {active}"
    assert sql_poll(hardening_database, done_q, lambda n: n >= 1, timeout=60, interval=0.005), "no batch committed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    at_kill = sql(hardening_database, done_q.replace("count(*)", "count(*) AS n"))[0]["n"]
    assert 0 < at_kill < pending_before, "maintenance was not interrupted in the middle"
    good_mid, total_mid = all_pii_decrypts(hardening_database, env)
    assert good_mid == total_mid, f"after the kill {total_mid - good_mid} stored values do not decrypt"

    again = cli_popen(env, "kms", "maintenance", "--batch-size", "500")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "remaining 0" in out, out
    remaining = sql(hardening_database, pending_q.replace("count(*)", "count(*) AS n"))[0]["n"]
    assert remaining == 0
    good, total = all_pii_decrypts(hardening_database, env)
    assert good == total, f"{total - good} of {total} stored values do not decrypt after maintenance"
    assert seeded_emails(hardening_database, env, seeded, active) == len(seeded)
    # Versions no row needs are only scheduled for destruction: no key lost its material.
    keys_after = sql(hardening_database, "SELECT count(*) AS n FROM kms_data_keys WHERE encrypted_key IS NOT NULL")
    assert keys_after[0]["n"] >= keys_before[0]["n"], "a data key lost its material"
    SUMMARY.faults.append(
        f"`kms maintenance` CLI SIGKILLed after {at_kill} of {pending_before} users were re-encrypted onto the "
        f"users' key version {active} (batches of 20): every stored value still decrypted; the second run "
        f"completed (remaining 0), {total} stored PII values decrypt, no key lost its material"
    )
    SUMMARY.invariants["stored PII values decrypting after maintenance kill"] += total + total_mid


@pytest.fixture
def pg_cluster(hardening_dir: Path, private_redis: PrivateRedis) -> Iterator[tuple[Cluster, EmbeddedPostgres, str]]:
    """Two replicas on a private PostgreSQL that the test may restart."""
    server = EmbeddedPostgres(hardening_dir / "postgres")
    dsn = server.start()
    try:
        asyncio.run(admin_sql(dsn, 'CREATE DATABASE "hardening"'))
        url = with_database(dsn, "hardening")
        asyncio.run(migrate_up(url))
        logs = hardening_dir / "pg-logs"
        logs.mkdir()
        env = server_env(url, private_redis.url, f"hardpg:{uuid.uuid4().hex[:8]}:", hardening_dir / "pg-data")
        group = Cluster(logs, env)
        try:
            group.start(2)
            yield group, server, url
        finally:
            group.stop()
    finally:
        server.stop()


def test_postgres_restarted_during_load(pg_cluster: tuple[Cluster, EmbeddedPostgres, str]) -> None:
    group, server, url = pg_cluster
    credential = create_credential(group.cli_env(), "hardening-pg", "kms.encrypt,kms.decrypt,kms.admin")
    marks: dict[str, float] = {}

    def stop() -> None:
        server.stop()
        marks["stopped"] = time.time()

    def start() -> None:
        server.start()
        marks["started"] = time.time()
        marks["recovered_in"] = wait_all_serving(group.targets, timeout=45)

    events = [Event(3.0, "stop postgres", stop), Event(6.0, "start postgres", start)]
    outcome = run_load(group, credential, duration=11.0, events=events, seed=4)
    unexpected = _unexpected(outcome, {"UNAVAILABLE SERVICE_UNAVAILABLE"})
    unavailable = sum(n for k, n in outcome.counter("reasons").items() if k.split(" ")[1] == "UNAVAILABLE")

    # No partial writes: every users row complete, every session started with its first token, and
    # every refresh rotation consumed one token and stored exactly one successor.
    incomplete = sql(
        url,
        "SELECT count(*) AS n FROM users WHERE email_encrypted IS NULL OR email_hash IS NULL "
        "OR pii_key_version IS NULL OR (phone_encrypted IS NULL) <> (phone_hash IS NULL)",
    )[0]["n"]
    broken_families = sql(
        url,
        "SELECT count(*) AS n FROM refresh_token_families f WHERE (SELECT count(*) FROM refresh_tokens t "
        "WHERE t.family_id = f.id) <> 1 + (SELECT count(*) FROM refresh_tokens t WHERE t.family_id = f.id "
        "AND t.used_at IS NOT NULL)",
    )[0]["n"]
    families = sql(url, "SELECT count(*) AS n FROM refresh_token_families")[0]["n"]
    good, total = all_pii_decrypts(url, group.cli_env())
    SUMMARY.load.append("during PostgreSQL restart: " + outcome.describe())
    SUMMARY.faults.append(
        f"PostgreSQL (private cluster) stopped for {marks['started'] - marks['stopped']:.1f} s under load and "
        f"started again: {unavailable} RPCs answered UNAVAILABLE, pools reconnected by themselves (all SERVING "
        f"{marks['recovered_in']:.1f} s after the start); no partial writes: {incomplete} incomplete users rows, "
        f"{broken_families} of {families} token families inconsistent, {good}/{total} stored PII values decrypt"
    )
    SUMMARY.invariants["token families checked for partial writes"] += families
    report = check_invariants(group, url, credential, outcome, "PostgreSQL restart")
    assert not report.problems, report.problems
    assert not unexpected, unexpected
    assert unavailable > 0, "the PostgreSQL outage went unnoticed"
    assert incomplete == 0 and broken_families == 0 and good == total
