"""PostgreSQL failover: a streaming standby made by the test (pg_basebackup), synchronous replication, the
replicas on a multi-host DSN with target_session_attrs=read-write. Under load the primary is stopped
(immediate: a crash, no shutdown checkpoint) and the standby promoted (pg_ctl promote). RPCs answer UNAVAILABLE
during the switch, never INTERNAL; the replicas recover by themselves; nothing acknowledged is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.invariants import check_invariants
from tests.hardening.load import Event, run_load
from tests.topology.components import PG_BIN, PgNode, package_version, topology_root, wait_until
from tests.topology.service import (
    create_credential,
    create_database,
    login_works,
    register_user,
    replica_env,
    start_cluster,
)
from tests.topology.summary import SUMMARY

STANDBY = "standby1"


@pytest.fixture(scope="module")
def pg_pair(topology_dir: Path) -> Iterator[tuple[PgNode, PgNode]]:
    root = topology_root(topology_dir / "postgres")
    # Synchronous replication on the primary only: a commit is acknowledged once the standby flushed it.
    primary = PgNode(root, "primary", extra=(f"synchronous_standby_names={STANDBY}",))
    standby = PgNode(root, "standby")
    try:
        primary.initdb()
        primary.start()
        standby.basebackup_of(primary, STANDBY)
        standby.start()
        wait_until(
            lambda: (
                primary.psql(f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY}'")
                == "sync"
            ),
            60,
            "the standby streaming synchronously",
        )
        yield primary, standby
    finally:
        standby.stop("immediate")
        primary.stop("immediate")


def test_primary_stopped_and_standby_promoted_under_load(
    topology_dir: Path, pg_pair: tuple[PgNode, PgNode], redis_url: str
) -> None:
    primary, standby = pg_pair
    direct = create_database(primary.url, "topo_failover")
    name = direct.rsplit("/", 1)[1]
    multi_host = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{name}"
        "?target_session_attrs=read-write"
    )
    env = replica_env(multi_host, redis_url, topology_dir / "failover-data", APP__DATA__DATABASE__CONNECT_TIMEOUT="2s")
    cluster = start_cluster(topology_dir / "failover-logs", env, 3)
    try:
        credential = create_credential(cluster.cli_env(), "topology-failover")
        user = register_user(cluster.targets[0])
        marks: dict[str, float] = {}

        def fail_over() -> None:
            primary.stop("immediate")
            marks["stopped"] = time.monotonic()
            time.sleep(1.0)  # the time an operator or a failover manager takes to decide
            standby.promote()
            marks["promoted"] = time.monotonic()
            wait_until(lambda: all(login_works(t, *user) for t in cluster.targets), 90, "logins on every replica")
            marks["recovered"] = time.monotonic()

        outcome = run_load(
            cluster,
            credential,
            duration=14,
            workers=3,
            rotate_every=2.0,
            seed=31,
            events=[Event(4.0, "stop the PostgreSQL primary, promote the standby", fail_over)],
        )
        # Checks read the promoted standby (the multi-host DSN finds it).
        report = check_invariants(
            cluster, multi_host, credential, outcome, "PostgreSQL primary stopped, standby promoted"
        )
        assert not report.problems, report.problems
        assert standby.psql("SELECT pg_is_in_recovery()", name) == "f"
        errors = {k: n for k, n in outcome.calls.items() if not k.endswith(" OK")}
    finally:
        cluster.stop()
    promoted, recovered = marks["promoted"] - marks["stopped"], marks["recovered"] - marks["stopped"]
    unavailable = sum(n for k, n in errors.items() if k.endswith("UNAVAILABLE"))
    SUMMARY.add(
        "components",
        f"PostgreSQL ({package_version(str(PG_BIN / 'postgres'))}) primary + streaming standby "
        f"(pg_basebackup, synchronous_standby_names={STANDBY}), 3 service replicas on a multi-host DSN with "
        "target_session_attrs=read-write",
    )
    SUMMARY.add(
        "faults",
        f"PostgreSQL primary stopped (immediate) under load, standby promoted {promoted:.1f} s later: "
        f"every replica logging in again {recovered:.1f} s after the stop; {unavailable} RPC attempts "
        "answered UNAVAILABLE, none INTERNAL",
    )
    SUMMARY.add(
        "kept",
        f"PostgreSQL failover: {report.counts['registered users that log in']} users log in, "
        f"{report.counts['ciphertexts decrypted to their plaintext']} ciphertexts decrypt, "
        f"{report.counts['refresh tokens accepted exactly once']} refresh tokens accepted once, "
        f"{report.counts['logged-out access tokens still revoked']} revoked tokens stay revoked, "
        f"{report.counts['key rotations under load']} rotations, one active version per key",
    )
