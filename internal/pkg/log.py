"""Structured logging with a request id and a redaction step in front of every sink.

Redaction works on the fully rendered line (message, arguments, extras, tracebacks), so a secret that
reaches a logger by accident is still masked: JWTs, bearer tokens, e-mail addresses, phone numbers,
PHC password hashes, long hex/base64 runs (keys, ciphertexts, refresh tokens), and the values of
keys that name a secret (``password=…``, ``"code": …``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_KEYS = frozenset(
    {
        "password", "passwd", "secret", "token", "code", "seed", "salt", "key", "plaintext", "authorization",
        "captcha_code", "totp_code", "secret_key", "api_key", "private_key", "access_token", "refresh_token",
    }
)  # fmt: skip
# Any `name: value` / `name=value` pair; the value is masked when the name is a secret's (see _mask_pair).
_PAIR = re.compile(r"""([A-Za-z_]+)("?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,}]+)""")
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


def _mask_pair(match: re.Match[str]) -> str:
    return match[1] + match[2] + "[REDACTED]" if match[1].lower() in _SECRET_KEYS else match[0]


def redact(text: str) -> str:
    text = _PAIR.sub(_mask_pair, text)
    lowered = text.lower()
    for pattern, replacement, needles in _PATTERNS:
        if any(needle in lowered for needle in needles):
            text = pattern.sub(replacement, text)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id.get():
            entry["request_id"] = rid
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        rid = request_id.get()
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line += f" {extras}" if extras else ""
        line += f" request_id={rid}" if rid else ""
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def setup_logging(level: str = "INFO", fmt: str = "auto", production: bool = False) -> None:
    """Route all logging through one redacting handler on stderr."""
    if fmt == "auto":
        fmt = "json" if production or not sys.stderr.isatty() else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
