"""Several server processes on one port, kept alive by one supervisor (``--workers N``).

The supervisor only runs processes. The entry script (``cmd/server/main.py``) owns flags, configuration and
start-up: it starts what must exist once per machine (the embedded PostgreSQL/Redis when no URL is
configured, the migrations) and then hands the supervisor the resolved configuration and the worker
command line. Each worker is a full ``serve`` with ``server.grpc.workers`` = N, which makes it bind the
gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads new connections over the workers; it gets the
URLs in its environment and never migrates.

Workers that exit while the supervisor is not stopping are restarted after a growing back-off; after
``CRASH_LIMIT`` exits within ``CRASH_WINDOW`` seconds the supervisor stops the rest and exits 1.
SIGTERM/SIGINT are forwarded to every worker, which drain within their grace period; the supervisor
exits 0 when all of them exited cleanly. Workers get ``PR_SET_PDEATHSIG`` = SIGTERM, so a supervisor
killed with SIGKILL leaves none behind (Linux only; the supervisor must run its event loop in the main
thread, because that signal follows the thread that forked).

Metrics: the workers share one prometheus_client multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``), so a
scrape of the monitoring port, whichever worker answers it, reports the sum over all of them; the
supervisor marks exited workers dead so their live gauges (RPCs in flight) drop out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Mapping

from prometheus_client import multiprocess

from internal.conf.config import Bootstrap
from internal.pkg.pdeathsig import die_with_parent

log = logging.getLogger(__name__)

# Present in every worker's environment: a worker serves, it never supervises.
WORKER_ENV = "AUTHKMS_WORKER"
CRASH_LIMIT = 5
CRASH_WINDOW = 30.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0
# Beyond the workers' own grace period, before the supervisor kills stragglers.
STOP_MARGIN = 10.0


def workers_to_supervise(config: Bootstrap, flag: int | None = None) -> int:
    """How many workers this process should supervise; 0 means serve in this process.

    ``flag`` is ``--workers`` (it wins over ``server.grpc.workers``). A worker never supervises.
    """
    if os.environ.get(WORKER_ENV):
        return 0
    wanted = config.server.grpc.workers if flag is None else flag
    return wanted if wanted > 1 else 0


class _Supervisor:
    def __init__(
        self, n: int, argv: list[str], env: Mapping[str, str], stop_timeout: float, metrics_dir: str | None = None
    ) -> None:
        self._n = n
        self._metrics_dir = metrics_dir
        self._argv = argv
        self._env = dict(env)
        self._stop_timeout = stop_timeout
        self._live: dict[int, asyncio.subprocess.Process] = {}
        self._crashes: deque[float] = deque()
        self._stopping = asyncio.Event()
        self._signal = signal.SIGTERM
        self._gave_up = False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self._stopping.is_set():
            return
        self._signal = sig
        self._stopping.set()
        for proc in self._live.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def run(self) -> int:
        slots = [asyncio.create_task(self._keep(slot)) for slot in range(self._n)]
        for task in slots:
            task.add_done_callback(self._slot_done)
        try:
            await self._stopping.wait()
            log.info("stopping workers", extra={"signal": self._signal.name, "workers": len(self._live)})
            _, pending = await asyncio.wait(slots, timeout=self._stop_timeout)
            if pending:
                log.error(
                    "workers did not stop in time; killing them", extra={"pids": [p.pid for p in self._live.values()]}
                )
                self._kill_all()
                await asyncio.wait(pending)
                return 1
            codes = [None if task.exception() else task.result() for task in slots]
            failed = any(task.exception() for task in slots)
        finally:
            self._kill_all()
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
        if failed or self._gave_up or any(code not in (0, None) for code in codes):
            return 1
        log.info("all workers stopped")
        return 0

    def _slot_done(self, task: asyncio.Task[int | None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker slot failed", exc_info=task.exception())
            self.stop()

    def _kill_all(self) -> None:
        for proc in self._live.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self._argv,
            env={**self._env, WORKER_ENV: str(slot)},
            preexec_fn=die_with_parent(os.getpid(), signal.SIGTERM),
        )
        self._live[slot] = proc
        if self._stopping.is_set():  # the stop signal arrived while this worker was being forked
            proc.send_signal(self._signal)
        log.info("worker started", extra={"worker": slot, "pid": proc.pid})
        return proc

    async def _keep(self, slot: int) -> int | None:
        """Run one worker slot until the supervisor stops; returns the last worker's exit code."""
        while not self._stopping.is_set():
            try:
                proc = await self._spawn(slot)
            except OSError:
                log.exception("cannot start worker", extra={"worker": slot})
                code = None
            else:
                code = await proc.wait()
                del self._live[slot]
                if self._metrics_dir is not None:
                    multiprocess.mark_process_dead(proc.pid, self._metrics_dir)
                if self._stopping.is_set():
                    return code
            delay = self._crashed(slot, code)
            if delay is None:
                return code
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        return None

    def _crashed(self, slot: int, code: int | None) -> float | None:
        """Record an unexpected exit; the back-off before the restart, or None when giving up."""
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - CRASH_WINDOW:
            self._crashes.popleft()
        recent = len(self._crashes)
        if recent >= CRASH_LIMIT:
            log.error(
                "workers are crash-looping; giving up",
                extra={"worker": slot, "exit_code": code, "crashes": recent, "window_s": CRASH_WINDOW},
            )
            self._gave_up = True
            self.stop()
            return None
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (recent - 1))
        log.warning("worker exited; restarting", extra={"worker": slot, "exit_code": code, "restart_in_s": delay})
        return delay


async def run_workers(
    n: int, worker_argv: list[str], env: Mapping[str, str], stop_timeout: float = 30.0, metrics_dir: str | None = None
) -> int:
    """Run ``n`` copies of ``worker_argv`` until SIGTERM/SIGINT (forwarded to each) or a crash loop.

    Returns 0 when every worker exited cleanly after the stop signal, 1 otherwise. Must run in the
    main thread's event loop (signal handlers, and PR_SET_PDEATHSIG follows the forking thread).
    """
    supervisor = _Supervisor(n, worker_argv, env, stop_timeout, metrics_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop, sig)
    try:
        return await supervisor.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def worker_env(config: Bootstrap, workers: int, base: Mapping[str, str], metrics_dir: str) -> dict[str, str]:
    """The workers' environment: the resolved database/Redis URLs, SO_REUSEPORT on, migrations off, one
    shared metrics folder."""
    database_url, redis_url = config.data.database.url, config.data.redis.url
    return {
        **base,
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        # The APP__ forms win over any (possibly empty) override inherited from ``base``.
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "APP__DATA__DATABASE__URL": database_url,
        "APP__DATA__REDIS__URL": redis_url,
        "APP__DATA__DATABASE__AUTO_MIGRATE": "false",
        "APP__SERVER__GRPC__WORKERS": str(workers),
    }


async def supervise(config: Bootstrap, worker_argv: list[str], workers: int) -> int:
    """Run ``workers`` copies of ``worker_argv`` (the entry script's ``serve``) on ``config``'s resolved
    database/Redis URLs until stopped. Exit code."""
    if config.server.grpc.addr.endswith(":0"):
        log.error("server.grpc.addr: several workers need a fixed port, not 0")
        return 2
    stop_timeout = config.server.grpc.grace_period.total_seconds() + STOP_MARGIN
    log.info("supervising workers", extra={"workers": workers, "addr": config.server.grpc.addr})
    metrics_dir = tempfile.mkdtemp(prefix="authkms-metrics-")
    try:
        env = worker_env(config, workers, os.environ, metrics_dir)
        return await run_workers(workers, worker_argv, env, stop_timeout, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
