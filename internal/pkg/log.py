"""Structured logging with a request id and a redaction step in front of every sink.

Redaction works on the fully rendered line (message, arguments, extras, tracebacks), so a secret that
reaches a logger by accident is still masked: JWTs, bearer tokens, e-mail addresses, phone numbers,
PHC password hashes, long hex/base64 runs (keys, ciphertexts, refresh tokens), and the values of
keys that name a secret (``password=…``, ``"code": …``).

Each formatter renders a line (``render``) and then redacts it (``format``): the access line, one per RPC, is
rendered alone (internal.server.accesslog), since every one of its fields is server-defined or vetted.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The caller's network (IPv4 /24, IPv6 /64) for the current RPC, for limits that count per network.
request_network: contextvars.ContextVar[str] = contextvars.ContextVar("request_network", default="")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/-]{1,64}")

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_KEYS = frozenset(
    {
        "password", "passwd", "secret", "token", "code", "seed", "salt", "key", "plaintext", "authorization",
        "captcha_code", "totp_code", "secret_key", "api_key", "private_key", "access_token", "refresh_token",
    }
)  # fmt: skip
# A `name: value` / `name=value` pair whose whole name (any case) is a secret's: the value (group 1) is masked.
# Searched for wherever it starts, even inside another pair's value ("ValueError: password=…"). It runs on an
# ASCII-lower-cased copy (same length, so spans carry over): much faster than a case-insensitive pattern.
_SECRET_NAMES = "|".join(sorted(_SECRET_KEYS, key=len, reverse=True))
_SECRET_PAIR = re.compile(r"""(?<![a-z_])(?:""" + _SECRET_NAMES + r""")"?\s*[:=]\s*("[^"]*"|'[^']*'|[^\s,}]+)""")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# (pattern, replacement, needles): a pattern runs only when one of its needles occurs in the lower-cased
# text, which keeps the per-line cost low (one access-log line per RPC) without weakening any pattern.
_PATTERNS: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*"), "[JWT]", ("eyj",)),
    (re.compile(r"(?i)bearer\s+\S+"), "Bearer [REDACTED]", ("bearer",)),
    (re.compile(r"\$argon2\w*\$[^\s\"']+"), "[PASSWORD-HASH]", ("$argon2",)),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[EMAIL]", ("@",)),
    (re.compile(r"\+\d[\d\s-]{6,}\d"), "[PHONE]", ("+",)),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "[HEX]", ("",)),
    (re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}"), "[BLOB]", ("",)),
]


def redact(text: str) -> str:
    lowered = text.translate(_ASCII_LOWER)
    if any(name in lowered for name in _SECRET_KEYS):
        parts: list[str] = []
        done = 0
        for match in _SECRET_PAIR.finditer(lowered):
            parts += (text[done : match.start(1)], "[REDACTED]")
            done = match.end(1)
        text = "".join(parts) + text[done:]
    for pattern, replacement, needles in _PATTERNS:
        if any(needle in lowered for needle in needles):
            text = pattern.sub(replacement, text)
    return text


def safe_request_id(candidate: object) -> str | None:
    """A caller-supplied request id if it is short, plain and nothing the redaction would mask; else None."""
    if isinstance(candidate, str) and _REQUEST_ID.fullmatch(candidate) and redact(candidate) == candidate:
        return candidate
    return None


_to_json = json.JSONEncoder(default=str).encode  # one encoder, not one per line


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last second rendered, reused by every line within it

    def _timestamp(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        millis = min(999, int((created - second) * 1000 + 1e-3))  # + 1 µs: .123 is stored as .12299…
        return f"{text}.{millis:03d}Z"

    def render_line(
        self, created: float, level: str, name: str, msg: str, rid: str, extras: dict[str, Any]
    ) -> str:
        """A line from its parts, before redaction."""
        entry: dict[str, Any] = {"ts": self._timestamp(created), "level": level, "logger": name, "msg": msg}
        if rid:
            entry["request_id"] = rid
        entry.update(extras)
        return _to_json(entry)

    def render(self, record: logging.LogRecord) -> str:
        """The line before redaction."""
        extras = _extras(record)
        if record.exc_info:
            extras["exc"] = self.formatException(record.exc_info)
        return self.render_line(
            record.created, record.levelname, record.name, record.getMessage(), request_id.get(), extras
        )

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.render(record))


class TextFormatter(logging.Formatter):
    def render_line(
        self, created: float, level: str, name: str, msg: str, rid: str, extras: dict[str, Any]
    ) -> str:
        """A line from its parts, before redaction."""
        stamp = time.strftime("%H:%M:%S", time.localtime(created))
        line = f"{stamp} {level:<7} {name}: {msg}"
        line += (" " + " ".join(f"{k}={v}" for k, v in extras.items())) if extras else ""
        return line + (f" request_id={rid}" if rid else "")

    def render(self, record: logging.LogRecord) -> str:
        """The line before redaction."""
        line = self.render_line(
            record.created, record.levelname, record.name, record.getMessage(), request_id.get(), _extras(record)
        )
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.render(record))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler ``setup_logging`` installs on the root logger.

    Lines handed to ``defer`` (the access lines, internal.server.accesslog) are written in batches: at most
    ``DEFER_LINES`` of them, at most ``DEFER_SECONDS`` late. One system call per batch instead of one per call
    took about 3–6% off the server CPU of an Encrypt under load (ten alternating rounds in one server process).
    Every record, ``flush`` and ``close`` writes the deferred lines first, so the log keeps its order; a SIGKILL
    loses at most the last ``DEFER_SECONDS``."""

    DEFER_LINES = 64
    DEFER_SECONDS = 0.05

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._deferred: list[str] = []
        self._due = threading.Event()  # set when the first line of a batch is deferred
        self._writer: threading.Thread | None = None

    def defer(self, line: str) -> None:
        """Write ``line`` (newline included) with the next batch."""
        with self.lock:  # type: ignore[union-attr]
            deferred = self._deferred
            deferred.append(line)
            if len(deferred) >= self.DEFER_LINES:
                self._write_deferred()
            elif len(deferred) == 1:
                if self._writer is None or not self._writer.is_alive():  # first use, or a forked child
                    self._writer = threading.Thread(target=self._write_when_due, name="log-batches", daemon=True)
                    self._writer.start()
                self._due.set()

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.DEFER_SECONDS)
            self._due.clear()
            self.flush()

    def _write_deferred(self) -> None:
        """The deferred lines, written; the caller holds the lock."""
        if self._deferred:
            lines, self._deferred = "".join(self._deferred), []
            try:
                self.stream.write(lines)
            except Exception:  # as logging does: a broken stream must not break the caller
                self.handleError(logging.makeLogRecord({"msg": "deferred lines"}))

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_deferred()
            super().emit(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_deferred()
            super().flush()

    def close(self) -> None:
        self.flush()
        super().close()

    def setStream(self, stream: Any) -> Any:
        with self.lock:  # type: ignore[union-attr]
            self._write_deferred()
            return super().setStream(stream)


def setup_logging(level: str = "INFO", fmt: str = "auto", production: bool = False) -> None:
    """Route all logging through one redacting handler on stderr."""
    if fmt == "auto":
        fmt = "json" if production or not sys.stderr.isatty() else "text"
    # No formatter here prints thread or process names: skip collecting them for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        old.flush()  # what it still holds (deferred lines) is written before the new handler takes over
    root.handlers[:] = [handler]
    root.setLevel(level)
