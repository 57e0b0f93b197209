"""`--workers N`: one supervisor, N server processes on one port, restarted when they die, none left behind.

Worker processes are found through /proc (children of the supervisor); which worker holds which socket is
read from /proc/net/tcp and each worker's file descriptors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internal.server.supervisor import run_workers
from tests.e2e.harness import ROOT, ServerProcess, create_credential, free_port

pytestmark = pytest.mark.e2e

_LISTEN, _ESTABLISHED = "0A", "01"


def start_supervisor(tmp_path: Path, env: dict[str, str], workers: int) -> ServerProcess:
    """Like harness.start_server with ``--workers``: the supervisor in front of the server processes."""
    grpc_port, http_port = free_port(), free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("APP__") and k not in ("DATABASE_URL", "REDIS_URL")},
        "APP__SERVER__GRPC__ADDR": f"127.0.0.1:{grpc_port}",
        "APP__SERVER__HTTP__ADDR": f"127.0.0.1:{http_port}",
        "APP__SERVER__GRPC__GRACE_PERIOD": "5s",
        "APP__KMS__ITERATIONS": "10000",
        "APP__MONITORING__LOG_FORMAT": "json",
        "APP__MONITORING__LOG_LEVEL": "DEBUG",
        **env,
    }
    log_path = tmp_path / f"supervisor-{grpc_port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "cmd" / "server" / "main.py"),
                "-conf",
                str(ROOT / "configs"),
                "--workers",
                f"{workers}",
            ],
            cwd=ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(proc, grpc_port, http_port, log_path, full_env)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _workers(pid: int) -> list[int]:
    """The supervisor's server workers (the embedded Redis, when used, is its child too)."""
    return [child for child in _children(pid) if "cmd/server/main.py" in _cmdline(child)]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def _sockets(port: int, state: str) -> set[int]:
    """Inodes of TCP sockets bound locally to ``port`` in ``state``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


def _owned(pid: int, inodes: set[int]) -> int:
    """How many of ``inodes`` the process ``pid`` has open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            count += 1
    return count


def _serving(target: str) -> bool:
    """A health check over a fresh connection (so the kernel picks a worker for it).

    wait_for_ready, as a well-behaved client does: a connection the kernel queued on a worker in the
    instant it was SIGKILLed is reset (measured: only within ~10 ms of the kill), and the client reconnects.
    """
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _wait(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Wait until ``condition()`` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def _workers_listening(server: ServerProcess, pids: list[int]) -> bool:
    """Every worker in ``pids`` has started both its gRPC and its monitoring listener."""
    grpc_listen, http_listen = _sockets(server.grpc_port, _LISTEN), _sockets(server.http_port, _LISTEN)
    return all(_owned(pid, grpc_listen) and _owned(pid, http_listen) for pid in pids)


@pytest.fixture
def supervisor(tmp_path: Path, server_env: dict[str, str]) -> Iterator[ServerProcess]:
    process = start_supervisor(tmp_path, server_env, workers=2)
    try:
        process.wait_serving()
        _wait(lambda: len(_workers(process.proc.pid)) == 2, 30, "two workers")
        _wait(lambda: _workers_listening(process, _workers(process.proc.pid)), 60, "both workers listening")
        yield process
    finally:
        workers = _workers(process.proc.pid)
        process.proc.kill()
        process.proc.wait()
        _wait(lambda: not any(_alive(pid) for pid in workers), 20, "workers follow a killed supervisor")


def test_two_workers_share_one_port_and_both_answer(supervisor: ServerProcess) -> None:
    workers = _workers(supervisor.proc.pid)
    assert len(workers) == 2
    # A local subchannel pool gives each channel its own TCP connection (the global pool would share one).
    local = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(supervisor.target, options=local) for _ in range(16)]
    try:
        for channel in channels:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        established = _sockets(supervisor.grpc_port, _ESTABLISHED)
        per_worker = [_owned(pid, established) for pid in workers]
    finally:
        for channel in channels:
            channel.close()
    assert sum(per_worker) >= 16
    assert all(per_worker), f"the kernel should spread 16 connections over both workers, got {per_worker}"


def test_killed_worker_is_restarted_while_the_service_keeps_answering(supervisor: ServerProcess) -> None:
    victim, survivor = _workers(supervisor.proc.pid)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    answers = 0
    while time.monotonic() - killed < 30:
        assert _serving(supervisor.target)
        answers += 1
        children = _workers(supervisor.proc.pid)
        if len(children) == 2 and _workers_listening(supervisor, children):
            break
        time.sleep(0.05)
    restart = time.monotonic() - killed
    children = _workers(supervisor.proc.pid)
    assert victim not in children and survivor in children and len(children) == 2, children
    assert _workers_listening(supervisor, children), "the replacement worker should be serving"
    print(f"\nworker restarted and listening {restart:.2f}s after SIGKILL ({answers} health checks answered meanwhile)")
    assert "worker exited; restarting" in supervisor.messages()


def test_sigterm_stops_every_worker_and_exits_zero(supervisor: ServerProcess) -> None:
    workers = _workers(supervisor.proc.pid)
    started = time.monotonic()
    assert supervisor.terminate(timeout=20) == 0, supervisor.logs()[-3000:]
    assert time.monotonic() - started < 8  # grace period 5 s in tests
    assert not any(_alive(pid) for pid in workers)
    assert supervisor.messages().count("stopped") == 2, "each worker drains and stops cleanly"


def test_killed_supervisor_takes_its_workers_along(supervisor: ServerProcess) -> None:
    workers = _workers(supervisor.proc.pid)
    supervisor.proc.kill()
    supervisor.proc.wait()
    _wait(lambda: not any(_alive(pid) for pid in workers), 10, "workers exit on PR_SET_PDEATHSIG")


def _processes_using(folder: Path) -> list[int]:
    """PIDs (not zombies) whose command line or working directory points into ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not _alive(int(proc.name)):
            continue
        try:
            cmdline = _cmdline(int(proc.name))
            cwd = str((proc / "cwd").resolve())
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(int(proc.name))
    return found


def test_embedded_dependencies_start_once_in_the_supervisor(tmp_path: Path) -> None:
    """No database/Redis configured: the supervisor owns the embedded servers, the workers share them."""
    data_dir = (tmp_path / "d").resolve()
    process = start_supervisor(tmp_path, {"APP__DATA__DATA_DIR": str(data_dir)}, workers=2)
    workers: list[int] = []
    try:
        process.wait_serving(timeout=120)
        _wait(lambda: _workers_listening(process, _workers(process.proc.pid)), 60, "both workers listening")
        workers = _workers(process.proc.pid)
        assert len(workers) == 2
        assert _processes_using(data_dir), "embedded servers run under the data folder"
        assert "worker exited; restarting" not in process.messages(), "no worker fought over the data folder"
        assert process.messages().count("migrations applied") == 1, "the entry script migrates once, workers never"
        beside = create_credential(process.env, "beside-the-supervisor", "kms.encrypt")  # shares its servers
        assert beside.startswith("akms_")
        assert process.terminate(timeout=30) == 0, process.logs()[-3000:]
    finally:
        process.proc.kill()
    _wait(lambda: not _processes_using(data_dir), 10, "embedded servers stopped")
    assert not any(_alive(pid) for pid in workers)


def test_workers_that_cannot_bind_make_the_supervisor_give_up(tmp_path: Path, server_env: dict[str, str]) -> None:
    """A port held without SO_REUSEPORT: every worker fails at start-up, so the supervisor must not loop."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        process = start_supervisor(tmp_path, {**server_env, "APP__SERVER__GRPC__ADDR": f"127.0.0.1:{port}"}, 2)
        try:
            code = process.proc.wait(timeout=120)
        finally:
            process.proc.kill()
    assert code == 1
    assert "workers are crash-looping; giving up" in process.messages()
    started = [entry["pid"] for entry in process.log_entries() if entry.get("msg") == "worker started"]
    assert len(started) >= 5
    assert not any(_alive(pid) for pid in started)


async def test_run_workers_gives_up_on_a_crash_loop() -> None:
    started = time.monotonic()
    code = await run_workers(2, [sys.executable, "-c", "raise SystemExit(3)"], {"PATH": os.environ["PATH"]})
    assert code == 1
    assert time.monotonic() - started < 20


async def test_run_workers_forwards_sigterm_and_reports_clean_exits(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        f"pathlib.Path({str(ready)!r}, str(__import__('os').getpid())).touch()\n"
        "time.sleep(60)\n"
    )
    ready.mkdir()
    task = asyncio.create_task(run_workers(3, [sys.executable, "-c", script], dict(os.environ), stop_timeout=10))
    deadline = time.monotonic() + 20
    while len(list(ready.iterdir())) < 3:
        assert time.monotonic() < deadline, "workers did not start"
        await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's handler replaces the default for the test's duration
    assert await asyncio.wait_for(task, 15) == 0
    assert not any(_alive(int(p.name)) for p in ready.iterdir())


def _scrape(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and line[0] != "#"}


def test_every_scrape_reports_all_workers(supervisor: ServerProcess) -> None:
    """Whichever worker answers /metrics, the counters are the sum over both (one multiprocess folder)."""
    local = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(supervisor.target, options=local) for _ in range(8)]
    check = 'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health"}'
    try:
        before = _scrape(supervisor).get(check, 0.0)
        for _ in range(5):
            for channel in channels:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        established = _sockets(supervisor.grpc_port, _ESTABLISHED)
        assert all(_owned(pid, established) for pid in _workers(supervisor.proc.pid)), "calls reached both workers"
        scrapes = [_scrape(supervisor) for _ in range(6)]  # new connections: the kernel picks a worker each time
    finally:
        for channel in channels:
            channel.close()
    assert {s[check] for s in scrapes} == {scrapes[0][check]}, "every scrape shows the same total"
    assert scrapes[0][check] >= before + 40
    in_flight = [v for k, v in scrapes[0].items() if k.startswith("grpc_server_in_flight{")]
    assert in_flight and all(v == 0 for v in in_flight), "in-flight gauges are summed over live workers"
