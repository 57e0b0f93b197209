"""The access line, one per RPC, written without the line-wide redaction scan: the one logging fast path.

Every field of the line is server-defined (method, status code, duration) or was vetted when the call arrived (the
request id, ``safe_request_id``), so the scan that guards every other line (about 50 µs a line, ten times the rest
of it) finds nothing here. The line is what the formatter ``setup_logging`` installed renders, written straight to
its handler's stream (no LogRecord, no trip through logging's handler chain: a third of the line's cost, measured);
where logging is set up any other way (tests' capture handlers), the line is a record like any other, redacted.

The lines leave in batches (``_Batches``): at most ``BATCH_LINES`` of them, at most ``BATCH_SECONDS`` late, all of
them at exit. One system call per batch instead of one per call took about 3–6% off the server CPU of an Encrypt
under load (ten alternating rounds in one server process). A filter on the handler writes the waiting lines before
any other record, so the log keeps its order; a SIGKILL loses at most the last ``BATCH_SECONDS`` of access lines.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from internal.pkg.log import JsonFormatter, StderrHandler, TextFormatter, request_id

ACCESS_LOGGER = "internal.server.access"
BATCH_LINES = 64
BATCH_SECONDS = 0.05


class _Batches:
    """The access lines waiting to be written, for the one handler they go to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # taken before the handler's lock, never after
        self._handler: StderrHandler | None = None
        self._lines: list[str] = []
        self._due = threading.Event()  # set when the first line of a batch waits
        self._writer: threading.Thread | None = None

    def add(self, handler: StderrHandler, line: str) -> None:
        with self._lock:
            if handler is not self._handler:
                self._write()  # to the handler they were meant for
                self._handler = handler
                if write_access_lines not in handler.filters:
                    handler.addFilter(write_access_lines)
            lines = self._lines
            lines.append(line)
            if len(lines) >= BATCH_LINES:
                self._write()
            elif len(lines) == 1:
                if self._writer is None or not self._writer.is_alive():  # first use, or a forked child
                    self._writer = threading.Thread(target=self._write_when_due, name="access-lines", daemon=True)
                    self._writer.start()
                self._due.set()

    def write(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        handler, lines = self._handler, self._lines
        if handler is None or not lines:
            return
        self._lines = []
        handler.acquire()
        try:
            handler.stream.write("".join(lines))
            handler.flush()
        except Exception:  # as logging does: a broken stream must not break the caller
            handler.handleError(logging.makeLogRecord({"msg": "access lines"}))
        finally:
            handler.release()

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(BATCH_SECONDS)
            self._due.clear()
            self.write()


_BATCHES = _Batches()


def write_access_lines(record: logging.LogRecord | None = None) -> bool:
    """Write the waiting access lines now. A filter on the handler they go to (so they precede any other record)
    and run at exit; returns True (the record passes)."""
    _BATCHES.write()
    return True


atexit.register(write_access_lines)  # before logging's own shutdown, which was registered first


class AccessLog:
    """Writes the access lines of one server (gRPC and HTTP share it)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._installed: StderrHandler | None = None  # the root handler the lines are written beside
        self._checked: logging.Handler | None = None  # the root handler last looked at

    def _route(self) -> None:
        root = logging.root.handlers
        only = root[0] if len(root) == 1 else None
        formatter = only.formatter if only is not None else None
        if isinstance(only, StderrHandler) and isinstance(formatter, JsonFormatter | TextFormatter):
            self._installed = only
        else:
            self._installed = None
        self._checked = only

    def write(self, fields: dict[str, Any]) -> None:
        """One INFO line ``rpc`` with ``fields``; every value must be server-defined or vetted."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        root = logging.root.handlers
        if len(root) != 1 or root[0] is not self._checked:
            self._route()
        installed = self._installed
        if installed is None:
            record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "rpc", None, None)
            record.__dict__.update(fields)
            logger.handle(record)
            return
        formatter = installed.formatter
        assert isinstance(formatter, JsonFormatter | TextFormatter)
        line = formatter.render_line(time.time(), "INFO", ACCESS_LOGGER, "rpc", request_id.get(), fields)
        _BATCHES.add(installed, line + "\n")
