"""PgBouncer in transaction pooling mode between the replicas and PostgreSQL (docs/operations.md
"Reference topology"): the whole auth flow and the KMS under load, with far fewer server connections than
the replicas hold, so every server connection really is shared between transactions of different clients."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from internal.conf.config import Database
from internal.data.data import pool_options
from tests.hardening.invariants import check_invariants
from tests.hardening.load import run_load
from tests.topology.components import PgBouncer, topology_root
from tests.topology.service import create_credential, create_database, drop_database, replica_env, start_cluster
from tests.topology.summary import SUMMARY

POOL_SIZE = 4  # PgBouncer server connections per database
REPLICAS = 2
REPLICA_POOL = 10  # asyncpg connections per replica: 20 clients share 4 server connections


@pytest.fixture(scope="module")
def bouncer(topology_dir: Path, postgres_server_url: str) -> Iterator[tuple[PgBouncer, str]]:
    """PgBouncer in front of the tests' PostgreSQL, and a fresh migrated database (direct URL)."""
    direct = create_database(postgres_server_url, "topo_bouncer")
    parts = urlsplit(postgres_server_url)
    pooler = PgBouncer(
        topology_root(topology_dir / "pgbouncer"),
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        pool_size=POOL_SIZE,
    )
    pooler.start()
    try:
        yield pooler, direct
    finally:
        pooler.stop()
        drop_database(postgres_server_url, direct)


def _pool_errors(url: str, options: dict[str, object], calls: int = 600) -> dict[str, int]:
    """Concurrent statements with parameters through the pooler, on an asyncpg pool with ``options``."""

    async def run() -> dict[str, int]:
        errors: dict[str, int] = {}
        try:
            pool = await asyncpg.create_pool(url, min_size=8, max_size=8, **options)  # type: ignore[arg-type]
        except asyncpg.PostgresError as exc:
            return {type(exc).__name__: 1}

        async def one(i: int) -> None:
            try:
                assert await pool.fetchval("SELECT $1::int + 1", i) == i + 1
            except asyncpg.PostgresError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        try:
            await asyncio.gather(*(one(i) for i in range(calls)))
        finally:
            await pool.close()
        return errors

    return asyncio.run(run())


def test_statement_cache_breaks_behind_transaction_pooling_unless_configured(
    bouncer: tuple[PgBouncer, str],
) -> None:
    pooler, direct = bouncer
    url = pooler.url(urlsplit(direct).path.strip("/"))
    # The service's direct-connection options: PgBouncer refuses the statement_timeout startup parameter.
    assert _pool_errors(url, pool_options(Database(url=url))) == {"ProtocolViolationError": 1}
    # asyncpg's defaults: its named prepared-statement cache fails as soon as connections are shared.
    broken = _pool_errors(url, {})
    assert broken.get("InvalidSQLStatementNameError", 0) > 0, broken
    # data.database.pooler: transaction makes the same load clean.
    assert _pool_errors(url, pool_options(Database(url=url, pooler="transaction", auto_migrate=False))) == {}


def test_auth_and_kms_through_pgbouncer_under_load(
    topology_dir: Path, bouncer: tuple[PgBouncer, str], redis_url: str
) -> None:
    pooler, direct = bouncer
    database = urlsplit(direct).path.strip("/")
    env = replica_env(
        pooler.url(database),
        redis_url,
        topology_dir / "bouncer-data",
        APP__DATA__DATABASE__POOLER="transaction",
        APP__DATA__DATABASE__AUTO_MIGRATE="false",
        APP__DATA__DATABASE__MIN_POOL_SIZE=str(REPLICA_POOL),
        APP__DATA__DATABASE__MAX_POOL_SIZE=str(REPLICA_POOL),
    )
    cluster = start_cluster(topology_dir / "bouncer-logs", env, REPLICAS)
    try:
        credential = create_credential(cluster.cli_env(), "topology-bouncer")
        samples: list[tuple[int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                try:
                    rows = pooler.admin("SHOW POOLS")
                except subprocess.SubprocessError:
                    continue  # one lost sample changes nothing; the maxima need many
                for row in rows:
                    if row["database"] == database:
                        clients = int(row["cl_active"]) + int(row["cl_waiting"])
                        servers = sum(int(row[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
                        samples.append((clients, servers))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            outcome = run_load(cluster, credential, duration=8, workers=4, rotate_every=2.0, seed=11)
        finally:
            stop.set()
            sampler.join()
        report = check_invariants(cluster, direct, credential, outcome, "PgBouncer transaction pooling")
        assert not report.problems, report.problems

        transactions = sum(int(r["total_xact_count"]) for r in pooler.admin("SHOW STATS") if r["database"] == database)
        max_clients = max(c for c, _ in samples)
        max_servers = max(s for _, s in samples)
        logs = cluster.logs()
    finally:
        cluster.stop()
    assert max_servers <= POOL_SIZE, samples
    assert max_clients > 2 * max_servers, f"connections were not shared: {samples}"
    assert transactions > 1000, transactions
    assert "prepared statement" not in logs and "InvalidSQLStatementName" not in logs
    SUMMARY.add(
        "components",
        f"PgBouncer ({pooler.version()}) pool_mode transaction, default_pool_size {POOL_SIZE}, "
        f"between {REPLICAS} replicas (asyncpg pools of {REPLICA_POOL}) and PostgreSQL",
    )
    SUMMARY.add(
        "kept",
        f"PgBouncer: {outcome.describe()}; up to {max_clients} client connections on "
        f"{max_servers} server connections, {transactions} pooled transactions; "
        f"invariants: {sum(report.counts.values())} checks OK",
    )
