"""The access line's fast path: formatted without a LogRecord, queued, written in order, never lost at exit."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from internal.pkg import log as log_module
from internal.pkg.log import JsonFormatter, StderrHandler, TextFormatter, log_vetted, request_id, setup_logging

FIELDS = {"method": "kms.v1.KMS/Encrypt", "grpc_code": "OK", "ms": 0.42, "n": 3, "ok": True, "é": "ü\n\"q\""}


def test_vetted_lines_are_exactly_what_the_json_formatter_writes() -> None:
    formatter = JsonFormatter()
    token = request_id.set("req-1")
    try:
        line = formatter.vetted_line("internal.server.interceptors", "rpc", FIELDS, 1_700_000_000.123)
    finally:
        request_id.reset(token)
    expected = {
        "ts": "2023-11-14T22:13:20.123Z",
        "level": "INFO",
        "logger": "internal.server.interceptors",
        "msg": "rpc",
        "request_id": "req-1",
        **FIELDS,
    }
    assert line == log_module._to_json(expected)  # byte for byte what the general path makes
    assert json.loads(line) == expected


def test_vetted_text_lines_match_the_text_formatter() -> None:
    record = logging.makeLogRecord({"msg": "rpc", "levelname": "INFO", "name": "x", "created": 1_700_000_000.0})
    record.__dict__.update(FIELDS)
    assert TextFormatter().vetted_line("x", "rpc", FIELDS, 1_700_000_000.0) == TextFormatter().format(record)


@pytest.fixture
def handler() -> Iterator[tuple[StderrHandler, io.StringIO]]:
    stream = io.StringIO()
    sink = StderrHandler(stream)
    sink.setFormatter(JsonFormatter())
    yield sink, stream
    sink.close()


async def test_in_a_loop_lines_are_queued_briefly_and_keep_their_order(
    handler: tuple[StderrHandler, io.StringIO],
) -> None:
    sink, stream = handler
    sink.write_vetted("access", "rpc", {"n": 1})
    sink.write_vetted("access", "rpc", {"n": 2})
    assert stream.getvalue() == "", "queued, not written per line"
    other = logging.makeLogRecord({"msg": "warning", "levelname": "WARNING", "levelno": logging.WARNING})
    sink.handle(other)  # any other record writes the queue first
    sink.write_vetted("access", "rpc", {"n": 3})
    await asyncio.sleep(StderrHandler.FLUSH_DELAY * 3)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("n", line["msg"]) for line in lines] == [1, 2, "warning", 3]


def test_outside_a_loop_lines_are_written_at_once(handler: tuple[StderrHandler, io.StringIO]) -> None:
    sink, stream = handler
    sink.write_vetted("access", "rpc", {"n": 1})
    assert json.loads(stream.getvalue())["n"] == 1


async def test_flush_writes_the_queue(handler: tuple[StderrHandler, io.StringIO]) -> None:
    sink, stream = handler
    sink.write_vetted("access", "rpc", {"n": 1})
    sink.flush()  # what logging.shutdown does at exit
    assert json.loads(stream.getvalue())["n"] == 1


def test_the_fast_path_steps_aside_for_other_handlers(caplog: pytest.LogCaptureFixture) -> None:
    """With any handler besides the installed one (here pytest's), access lines go through logging as records."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        root.addHandler(caplog.handler)
        log_vetted(logging.getLogger("access.test"), "rpc", {"method": "a/b"})
        assert [r.getMessage() for r in caplog.records if r.name == "access.test"] == ["rpc"]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        log_module._vetted_sink = None
