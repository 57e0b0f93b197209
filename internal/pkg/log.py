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
import time
from typing import Any

import orjson

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


_stdlib_json = json.JSONEncoder(default=str).encode  # one encoder, not one per line
# Dates and dataclasses go to ``default=str`` as the stdlib encoder sends them, not orjson's own rendering.
_AS_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _to_json(entry: dict[str, Any]) -> str:
    """One line of JSON, ASCII only: orjson (a tenth of the stdlib encoder's time for an access line, which
    every RPC writes), or the stdlib encoder for what orjson refuses (ints beyond 64 bits) or writes as other
    than ASCII (the stdlib encoder escapes it, so the line suits any stream)."""
    try:
        line = orjson.dumps(entry, default=str, option=_AS_STDLIB).decode()
    except TypeError:  # orjson.JSONEncodeError
        return _stdlib_json(entry)
    return line if line.isascii() else _stdlib_json(entry)


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
    """The one handler ``setup_logging`` installs on the root logger."""


def setup_logging(level: str = "INFO", fmt: str = "auto", production: bool = False) -> None:
    """Route all logging through one redacting handler on stderr."""
    if fmt == "auto":
        fmt = "json" if production or not sys.stderr.isatty() else "text"
    # No formatter here prints thread or process names: skip collecting them for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
