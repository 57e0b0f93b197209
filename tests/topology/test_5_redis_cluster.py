"""Redis Cluster (three masters) on a redis+cluster:// URL: the auth flow and the KMS under load, a captcha
raced by many consumers, and a lockout raced by parallel wrong passwords. Every multi-key script and pipeline
must run there (the lockout keys share the account's hash tag; the revocation lookup is one pipelined GET
per key, not a cross-slot MGET)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from internal.biz.captcha import IMAGE, CaptchaRecord
from internal.conf.config import Redis
from internal.data.captcha import RedisCaptchaStore
from internal.data.data import create_redis
from tests.hardening.invariants import check_invariants
from tests.hardening.load import run_load
from tests.hardening.workload import error_reason
from tests.topology.components import RedisClusterGroup, package_version, topology_root
from tests.topology.service import (
    create_credential,
    create_database,
    drop_database,
    register_user,
    replica_env,
    start_cluster,
)
from tests.topology.summary import SUMMARY

RACERS = 40


@pytest.fixture(scope="module")
def redis_cluster(topology_dir: Path) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(topology_root(topology_dir / "redis-cluster"))
    try:
        group.start()
        yield group
    finally:
        group.stop()


async def _captcha_races(url: str, prefix: str) -> tuple[Counter[str], Counter[str]]:
    client = create_redis(Redis(url=url, key_prefix=prefix))
    store = RedisCaptchaStore(client, prefix)
    try:
        await store.save("right", CaptchaRecord("code", IMAGE, ""), timedelta(minutes=5))
        right = await asyncio.gather(*(store.consume("right", "code", (), 5) for _ in range(RACERS)))
        await store.save("wrong", CaptchaRecord("code", IMAGE, ""), timedelta(minutes=5))
        wrong = await asyncio.gather(*(store.consume("wrong", f"guess{i}", (), 5) for i in range(RACERS)))
    finally:
        await client.aclose()
    return Counter(r.value for r in right), Counter(r.value for r in wrong)


def test_auth_captcha_and_lockout_on_redis_cluster(
    topology_dir: Path, redis_cluster: RedisClusterGroup, postgres_server_url: str
) -> None:
    direct = create_database(postgres_server_url, "topo_rcluster")
    env = replica_env(direct, redis_cluster.url, topology_dir / "rcluster-data")
    cluster = start_cluster(topology_dir / "rcluster-logs", env, 2)
    try:
        credential = create_credential(cluster.cli_env(), "topology-rcluster")
        outcome = run_load(cluster, credential, duration=8, workers=3, rotate_every=2.0, seed=51)
        report = check_invariants(cluster, direct, credential, outcome, "Redis Cluster")
        assert not report.problems, report.problems

        # Lockout race: parallel wrong passwords for one account; every one counted, the hard lock after 5.
        username, password = register_user(cluster.targets[0])
        with grpc.insecure_channel(cluster.targets[0]) as channel:
            access = (
                auth_pb2_grpc.AuthStub(channel)
                .Login(auth_pb2.LoginRequest(username=username, password=password), timeout=30)
                .access_token
            )

        def wrong(i: int) -> str:
            with grpc.insecure_channel(cluster.targets[i % 2]) as channel:
                try:
                    auth_pb2_grpc.AuthStub(channel).Login(
                        auth_pb2.LoginRequest(username=username, password=password + "x"), timeout=30
                    )
                except grpc.RpcError as err:
                    return error_reason(err)
            return "OK"

        with ThreadPoolExecutor(12) as pool:
            answers = Counter(pool.map(wrong, range(RACERS)))
        assert set(answers) <= {"INVALID_CREDENTIALS", "RATE_LIMITED"}, answers
        with grpc.insecure_channel(cluster.targets[1]) as channel:
            state = auth_pb2_grpc.AuthStub(channel).LockStatus(
                auth_pb2.LockStatusRequest(username=username),
                metadata=(("authorization", f"Bearer {access}"),),
                timeout=30,
            )
        assert state.failed_attempts == answers["INVALID_CREDENTIALS"], (state, answers)
        assert state.locked == (answers["INVALID_CREDENTIALS"] >= 5), (state, answers)
        prefix = env["APP__DATA__REDIS__KEY_PREFIX"] + "probe:"
        right, wrong_guesses = asyncio.run(_captcha_races(redis_cluster.url, prefix))
        spread = redis_cluster.keys_per_node()
    finally:
        cluster.stop()
        drop_database(postgres_server_url, direct)
    assert right == Counter({"ok": 1, "unknown": RACERS - 1}), right
    assert wrong_guesses == Counter({"mismatch": 4, "exhausted": 1, "unknown": RACERS - 5}), wrong_guesses
    assert sum(1 for n in spread if n) >= 2, f"keys on one node only: {spread}"
    SUMMARY.add(
        "components", f"Redis Cluster ({package_version('redis-server')}): 3 masters, 2 replicas on redis+cluster://"
    )
    SUMMARY.add(
        "kept",
        f"Redis Cluster: {outcome.describe()}; invariants {sum(report.counts.values())} checks OK; "
        f"captcha raced by {RACERS}: 1 ok; {RACERS} wrong guesses: 4 mismatch + 1 exhausted; "
        f"{answers['INVALID_CREDENTIALS']} parallel wrong passwords all counted; keys per node {spread}",
    )
