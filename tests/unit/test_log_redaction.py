"""Every kind of secret is masked by the log pipeline itself, whatever the caller passed to it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from internal.pkg.log import JsonFormatter, TextFormatter, redact, request_id, safe_request_id

SECRETS = {
    "jwt": "eyJhbGciOiJFZERTQSIsImtpZCI6ImFiYyJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLWJ5dGVz",
    "bearer": "Bearer s3cr3t-opaque-token-value",
    "email": "alice.secret@example.com",
    "phone": "+8613812345678",
    "argon2": "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo",
    "hex_key": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "b64_refresh": "q3JtYWluLXJlZnJlc2gtdG9rZW4tdmFsdWUtMTIzNDU2Nzg5MA",
    "password_kv": "password=hunter2pass",
    "code_json": '"captcha_code": "493817"',
    "seed_kv": "seed: my-root-seed-value",
}
LEAKED_PARTS = {
    "jwt": "c2lnbmF0dXJl",
    "bearer": "s3cr3t",
    "email": "alice.secret",
    "phone": "13812345678",
    "argon2": "aGFzaGhhc2hoYXNo",
    "hex_key": "9f86d081884c",
    "b64_refresh": "cmVmcmVzaC10b2tlbi",
    "password_kv": "hunter2pass",
    "code_json": "493817",
    "seed_kv": "my-root-seed-value",
}


@contextlib.contextmanager
def captured(name: str, formatter: logging.Formatter, level: int) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through ``formatter`` into a string, for the duration of the block."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("kind", SECRETS)
def test_redact_masks_every_secret_kind(kind: str) -> None:
    assert LEAKED_PARTS[kind] not in redact(f"context before {SECRETS[kind]} and after")


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_formatters_redact_message_args_extras_and_tracebacks(formatter: logging.Formatter) -> None:
    token = request_id.set("req-123")
    try:
        with captured("test.redaction", formatter, logging.DEBUG) as (logger, stream):
            logger.info("login for %s", SECRETS["email"], extra={"token": SECRETS["jwt"], "phone": SECRETS["phone"]})
            try:
                raise ValueError(f"bad {SECRETS['password_kv']}")
            except ValueError:
                logger.exception("failed with %s", SECRETS["bearer"])
    finally:
        request_id.reset(token)
    output = stream.getvalue()
    for kind in ("email", "jwt", "phone", "password_kv", "bearer"):
        assert LEAKED_PARTS[kind] not in output
    assert "req-123" in output


def test_json_lines_are_valid_json() -> None:
    record = logging.makeLogRecord({"msg": "rpc", "levelname": "INFO", "name": "x", "method": "auth.v1.Auth/Login"})
    line = JsonFormatter().format(record)
    assert json.loads(line)["method"] == "auth.v1.Auth/Login"


@dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "naïve ü \u2028 \U0001f511",  # not ASCII: escaped as the stdlib encoder escapes it
        2**70,  # beyond orjson's 64 bits
        1.5,
        None,
        [1, "two", {"three": 3}],
        datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
        _Point(1),
        {1, 2} - {2},  # not JSON: str() of it, as before
    ],
)
def test_json_lines_read_back_as_the_stdlib_encoder_writes_them(value: object) -> None:
    record = logging.makeLogRecord({"msg": "m", "levelname": "INFO", "name": "x", "value": value})
    line = JsonFormatter().render(record)
    assert line.isascii()
    assert json.loads(line)["value"] == json.loads(json.dumps({"value": value}, default=str))["value"]


def test_access_log_fields_stay_readable() -> None:
    record = logging.makeLogRecord(
        {"msg": "rpc", "levelname": "INFO", "name": "x", "method": "kms.v1.KMS/Encrypt", "grpc_code": "OK"}
    )
    token = request_id.set("0123456789abcdef")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert entry["grpc_code"] == "OK"
    assert entry["request_id"] == "0123456789abcdef"


@pytest.mark.parametrize("kind", [k for k in SECRETS if " " not in SECRETS[k] and "=" not in SECRETS[k]])
def test_request_ids_that_look_secret_are_refused(kind: str) -> None:
    assert safe_request_id(SECRETS[kind]) is None


@pytest.mark.parametrize("candidate", ["", "x" * 65, "a b", "id\n", "ünï", None, b"bytes", 42])
def test_request_ids_must_be_short_and_plain(candidate: object) -> None:
    assert safe_request_id(candidate) is None


def test_plain_request_ids_are_kept() -> None:
    for candidate in ("req-123", "0123456789abcdef", "trace/7:span.9_a"):
        assert safe_request_id(candidate) == candidate


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_render_is_the_line_before_redaction(formatter: JsonFormatter | TextFormatter) -> None:
    """What the access line's fast path writes (internal.server.accesslog); ``format`` is always redacted."""
    try:
        raise ValueError(SECRETS["password_kv"])
    except ValueError:
        record = logging.makeLogRecord({"msg": "rpc", "levelname": "ERROR", "name": "x", "digest": "ab" * 20})
        record.exc_info = sys.exc_info()
    assert LEAKED_PARTS["password_kv"] in formatter.render(record) and "ab" * 20 in formatter.render(record)
    assert formatter.format(record) == redact(formatter.render(record))
    assert LEAKED_PARTS["password_kv"] not in formatter.format(record)


def test_secret_pairs_are_found_inside_other_values() -> None:
    for line in ("ValueError: password=hunter2pass", "detail='token: hunter2pass'", "a=b,secret=hunter2pass"):
        assert "hunter2pass" not in redact(line), line
