"""Structured logging with a request id and a redaction step in front of every sink.

Redaction works on the fully rendered line (message, arguments, extras, tracebacks), so a secret that
reaches a logger by accident is still masked: JWTs, bearer tokens, e-mail addresses, phone numbers,
PHC password hashes, long hex/base64 runs (keys, ciphertexts, refresh tokens), and the values of
keys that name a secret (``password=…``, ``"code": …``).

The one exception is a record logged with ``log_vetted``: every field is server-defined (method name, status
code, duration) or was vetted before it was logged (the request id, see ``safe_request_id``). That is the
access line, one per RPC, where the line-wide scan would cost more than the rest of the line.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import re
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The caller's network (IPv4 /24, IPv6 /64) for the current RPC, for limits that count per network.
request_network: contextvars.ContextVar[str] = contextvars.ContextVar("request_network", default="")
VETTED = "_vetted"  # record attribute: the extra fields, all server-defined or vetted (see log_vetted)
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
_json_str = json.encoder.encode_basestring_ascii  # what _to_json does to a str, without the dict around it


def _json_value(value: object) -> str:
    """``_to_json(value)``, with the common kinds done directly (float and int repr is what json writes)."""
    if isinstance(value, str):
        return _json_str(value)
    if type(value) is int or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    return _to_json(value)


def log_vetted(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """Log ``msg`` at INFO with ``fields``, every one server-defined or vetted: no line-wide redaction, and none
    of the caller lookup a call site needs (this is the once-per-RPC access line). Through the handler
    ``setup_logging`` installed, the line is formatted directly and queued (see ``StderrHandler``)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    sink = _vetted_sink
    root = logging.root
    if sink is not None and len(root.handlers) == 1 and root.handlers[0] is sink and not logger.handlers:
        sink.write_vetted(logger.name, msg, fields)
        return
    record = logging.LogRecord(logger.name, logging.INFO, "", 0, msg, None, None)
    setattr(record, VETTED, fields)
    logger.handle(record)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    vetted = getattr(record, VETTED, None)
    if vetted is not None:
        return vetted  # type: ignore[no-any-return]
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _is_vetted(record: logging.LogRecord) -> bool:
    return getattr(record, VETTED, None) is not None and not record.exc_info and not record.args


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

    def vetted_line(self, name: str, msg: str, fields: dict[str, Any], created: float, level: str = "INFO") -> str:
        """What ``format`` makes of a vetted record, built without one: the access line's hot path."""
        line = f'{{"ts": "{self._timestamp(created)}", "level": "{level}", "logger": {_json_str(name)}'
        line += f', "msg": {_json_str(msg)}'
        if rid := request_id.get():
            line += f', "request_id": {_json_str(rid)}'
        for key, value in fields.items():
            line += f", {_json_str(key)}: {_json_value(value)}"
        return line + "}"

    def format(self, record: logging.LogRecord) -> str:
        if _is_vetted(record):
            fields = getattr(record, VETTED)
            return self.vetted_line(record.name, record.getMessage(), fields, record.created, record.levelname)
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id.get():
            entry["request_id"] = rid
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(_to_json(entry))


class TextFormatter(logging.Formatter):
    def _line(self, created: float, level: str, name: str, msg: str, extras: dict[str, Any]) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(created))
        rid = request_id.get()
        line = f"{stamp} {level:<7} {name}: {msg}"
        line += (" " + " ".join(f"{k}={v}" for k, v in extras.items())) if extras else ""
        return line + (f" request_id={rid}" if rid else "")

    def vetted_line(self, name: str, msg: str, fields: dict[str, Any], created: float, level: str = "INFO") -> str:
        """What ``format`` makes of a vetted record, built without one: the access line's hot path."""
        return self._line(created, level, name, msg, fields)

    def format(self, record: logging.LogRecord) -> str:
        line = self._line(record.created, record.levelname, record.name, record.getMessage(), _extras(record))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line if _is_vetted(record) else redact(line)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler ``setup_logging`` installs. Vetted lines (one access line per RPC) are formatted
    directly and queued; the event loop writes the queue at most FLUSH_DELAY later, many lines in one write.
    Any other record first writes the queue, so lines keep their order; so do ``flush`` and logging's exit
    hook. Outside an event loop a vetted line is written at once. A SIGKILL loses at most FLUSH_DELAY of
    access lines."""

    FLUSH_DELAY = 0.05

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._queued: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a queue flush is scheduled on

    def write_vetted(self, name: str, msg: str, fields: dict[str, Any]) -> None:
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter | TextFormatter)
        line = formatter.vetted_line(name, msg, fields, time.time())
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.acquire()
        try:
            self._queued.append(line)
            if loop is None:
                self._write_queued()
                self.stream.flush()
            elif self._flush_on is not loop:
                self._flush_on = loop
                loop.call_later(self.FLUSH_DELAY, self.flush)
        finally:
            self.release()

    def _write_queued(self) -> None:  # with the lock held
        if self._queued:
            self.stream.write("\n".join(self._queued) + "\n")
            self._queued.clear()

    def emit(self, record: logging.LogRecord) -> None:  # with the lock held
        self._write_queued()
        super().emit(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            self._write_queued()
            super().flush()
        finally:
            self.release()


_vetted_sink: StderrHandler | None = None


def setup_logging(level: str = "INFO", fmt: str = "auto", production: bool = False) -> None:
    """Route all logging through one redacting handler on stderr."""
    if fmt == "auto":
        fmt = "json" if production or not sys.stderr.isatty() else "text"
    # No formatter here prints thread or process names: skip collecting them for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    global _vetted_sink
    handler = StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _vetted_sink = handler
