"""HAProxy as the gRPC load balancer in front of 3 replicas (each ``--workers 2``), with a gRPC health check
per service. Clients reach the service only through HAProxy and retry on UNAVAILABLE only (a deadline or any
other error counts as a failure). A rolling restart (SIGTERM: the replica turns NOT_SERVING and drains) costs
the clients nothing; a SIGKILLed replica leaves the rotation within the measured time."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, free_port, start_server
from tests.hardening.invariants import check_invariants
from tests.hardening.load import Event, run_load
from tests.topology.components import (
    PROBE_BACKEND,
    ROUTED_SERVICES,
    HAProxy,
    package_version,
    topology_root,
    wait_until,
)
from tests.topology.service import create_credential, create_database, drop_database, replica_env
from tests.topology.summary import SUMMARY

REPLICAS = 3
WORKERS = 2
INTER_MS = 500
LOAD_S = 45


@dataclass
class Fronted:
    """The replicas as clients see them: one target, the balancer (what run_load / check_invariants use)."""

    balancer: HAProxy
    replicas: list[ServerProcess]

    @property
    def targets(self) -> list[str]:
        return [self.balancer.target]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _start(root: Path, env: dict[str, str], grpc_port: int, http_port: int) -> ServerProcess:
    ports = {"APP__SERVER__GRPC__ADDR": f"127.0.0.1:{grpc_port}", "APP__SERVER__HTTP__ADDR": f"127.0.0.1:{http_port}"}
    # The balancer knows each replica by its address, so a restarted replica takes the same ports.
    process = start_server(root, {**env, **ports}, ("--workers", str(WORKERS)))
    return dataclasses.replace(process, grpc_port=grpc_port, http_port=http_port)


@pytest.fixture(scope="module")
def balanced(topology_dir: Path, postgres_server_url: str, redis_url: str) -> Iterator[tuple[Fronted, str, dict]]:
    direct = create_database(postgres_server_url, "topo_haproxy")
    root = topology_root(topology_dir / "haproxy")
    env = replica_env(direct, redis_url, root / "data")
    ports = [(free_port(), free_port()) for _ in range(REPLICAS)]
    replicas = [_start(root, env, g, h) for g, h in ports]
    balancer = HAProxy(root, [f"127.0.0.1:{g}" for g, _ in ports], INTER_MS)
    try:
        for replica in replicas:
            replica.wait_serving(120)
        balancer.start()
        yield Fronted(balancer, replicas), direct, env
    finally:
        balancer.stop()
        for replica in replicas:
            with contextlib.suppress(AssertionError):
                replica.terminate()
        drop_database(postgres_server_url, direct)


def _all(balancer: HAProxy, server: str, state: str) -> bool:
    states = balancer.server_states()
    return all(states[(backend, server)].startswith(state) for backend in ROUTED_SERVICES)


def test_rolling_restart_and_kill_behind_haproxy(balanced: tuple[Fronted, str, dict], topology_dir: Path) -> None:
    fronted, direct, env = balanced
    balancer = fronted.balancer
    wait_until(lambda: all(_all(balancer, f"r{i}", "UP") for i in range(REPLICAS)), 30, "every replica UP")
    # The probe backend checks a service nobody serves: DOWN on every server (the check reads gRPC).
    wait_until(
        lambda: all(s.startswith("DOWN") for (b, _), s in balancer.server_states().items() if b == PROBE_BACKEND[0]),
        30,
        "the probe backend DOWN",
    )
    credential = create_credential(fronted.replicas[0].env, "topology-haproxy")
    root = topology_dir / "haproxy"
    restarts: list[tuple[float, float]] = []  # (seconds, wall time done)
    killed: dict[str, float] = {}

    def rolling_restart() -> None:
        # r1 and r2 restart one at a time, each drained by SIGTERM (r0 is the one killed afterwards).
        for i in range(1, REPLICAS):
            old = fronted.replicas[i]
            began = time.monotonic()
            assert old.terminate() == 0  # SIGTERM: NOT_SERVING, drain, exit 0
            new = _start(root, env, old.grpc_port, old.http_port)
            new.wait_serving(120)
            fronted.replicas[i] = new
            wait_until(lambda i=i: _all(balancer, f"r{i}", "UP"), 30, f"r{i} back UP")
            restarts.append((time.monotonic() - began, time.time()))

    def kill_one() -> None:
        victim = fronted.replicas[0]
        workers = _children(victim.proc.pid)
        os.kill(victim.proc.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        began = time.monotonic()
        victim.proc.wait()
        killed["down"] = wait_until(lambda: _all(balancer, "r0", "DOWN"), 30, "r0 DOWN", 0.02)
        fronted.replicas[0] = _start(root, env, victim.grpc_port, victim.http_port)
        fronted.replicas[0].wait_serving(120)
        wait_until(lambda: _all(balancer, "r0", "UP"), 30, "r0 back UP")
        killed["back"] = time.monotonic() - began
        killed["at"] = time.time()

    outcome = run_load(
        fronted,  # type: ignore[arg-type]
        credential,
        duration=LOAD_S,
        workers=3,
        rotate_every=3.0,
        seed=41,
        # Events run in order: the rolling restart of r1 and r2 first (it must overlap the clients), then
        # the kill of r0 (and its restart).
        events=[Event(1.0, "rolling restart", rolling_restart), Event(2.0, "SIGKILL a replica", kill_one)],
    )
    report = check_invariants(fronted, direct, credential, outcome, "rolling restart and a kill behind HAProxy")  # type: ignore[arg-type]
    assert not report.problems, report.problems
    assert not outcome.bad, outcome.bad[:5]
    gave_up = outcome.counter("gave_up")
    assert not gave_up, gave_up
    assert len(restarts) == REPLICAS - 1 and "down" in killed, (restarts, killed)
    under_load = sum(1 for _, done in restarts if done <= outcome.start_wall + LOAD_S)
    assert under_load >= 1, f"no restart finished while the clients ran: {restarts}"
    retried = sum(r.retries for r in outcome.results)
    answered = {k: n for k, n in outcome.calls.items() if not k.endswith(" OK")}
    SUMMARY.add(
        "components",
        f"HAProxy ({package_version('haproxy', '-v')}) mode http, h2 to {REPLICAS} service replicas x --workers "
        f"{WORKERS}, one backend per service ({', '.join(s or 'overall' for s in ROUTED_SERVICES.values())}) with "
        f"gRPC health checks every {INTER_MS} ms, retry-on conn-failure",
    )
    SUMMARY.add(
        "faults",
        f"SIGKILL of a replica (and its workers) "
        f"{'under load' if killed['at'] - killed['back'] <= outcome.start_wall + LOAD_S else 'after the load'}: "
        f"HAProxy stopped sending to it after "
        f"{killed['down']:.2f} s (check inter {INTER_MS} ms, fall 1); restarted and back in rotation after "
        f"{killed['back']:.1f} s",
    )
    SUMMARY.add(
        "faults",
        f"rolling restart (SIGTERM: NOT_SERVING, drain, exit 0; start; UP) of {REPLICAS - 1} of the {REPLICAS} "
        f"replicas: "
        f"{', '.join(f'{t:.1f}' for t, _ in restarts)} s each, {under_load} finished while the clients ran; "
        f"clients saw no error (retrying on UNAVAILABLE only: {retried} retries)",
    )
    SUMMARY.add("kept", f"HAProxy: {outcome.describe()}; non-OK attempts {answered or 'none'}, none given up")
