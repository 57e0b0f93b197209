"""The access line's fast path (internal.server.accesslog): the installed formatter's line, minus the redaction
scan, on the installed handler's stream in batches that keep the log's order and are all written at exit; through
ordinary logging whenever logging is set up any other way."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from internal.pkg.log import JsonFormatter, TextFormatter, request_id, setup_logging
from internal.server.accesslog import ACCESS_LOGGER, BATCH_LINES, BATCH_SECONDS, AccessLog, write_access_lines

FIELDS = {"method": "kms.v1.KMS/Encrypt", "grpc_code": "OK", "ms": 0.42, "n": 3, "ok": True, "é": "ü\n\"q\""}
# What the redaction scan would mask: the access line never carries such a value, so it is not scanned.
LOOKS_SECRET = {"method": "kms.v1.KMS/Encrypt", "grpc_code": "OK", "digest": "0123456789abcdef" * 2}


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    """Where ``setup`` sends the log (in place of stderr); logging is restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield _STREAM
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        access = logging.getLogger(ACCESS_LOGGER)
        access.handlers[:] = []
        access.propagate = True
        _STREAM.seek(0)
        _STREAM.truncate()


_STREAM = io.StringIO()


def written(stream: io.StringIO) -> str:
    """What reached ``stream`` once the waiting access lines are written."""
    write_access_lines()
    return stream.getvalue()


def setup(level: str, fmt: str) -> None:
    """Logging as the server sets it up, into ``_STREAM``."""
    setup_logging(level, fmt)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(_STREAM)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_access_lines_are_the_installed_formatters_lines_unscanned(stderr: io.StringIO, fmt: str) -> None:
    setup("INFO", fmt)
    formatter = logging.getLogger().handlers[0].formatter
    assert isinstance(formatter, JsonFormatter | TextFormatter)
    token = request_id.set("req-1")
    try:
        AccessLog().write(LOOKS_SECRET)
        record = logging.makeLogRecord({"msg": "rpc", "levelname": "INFO", "name": ACCESS_LOGGER, **LOOKS_SECRET})
        expected = formatter.render(record)
    finally:
        request_id.reset(token)
    line = written(stderr)
    assert line.endswith("\n") and line.count("\n") == 1
    if fmt == "json":  # all but the time
        assert list(json.loads(line).items())[1:] == list(json.loads(expected).items())[1:]
    else:
        assert line.split(" ", 1)[1] == expected.split(" ", 1)[1] + "\n"
    assert "0123456789abcdef" * 2 in line and "req-1" in line


def test_json_access_lines_are_valid_json(stderr: io.StringIO) -> None:
    setup("INFO", "json")
    AccessLog().write(FIELDS)
    entry = json.loads(written(stderr))
    assert {k: entry[k] for k in FIELDS} == FIELDS
    assert (entry["logger"], entry["msg"], entry["level"]) == (ACCESS_LOGGER, "rpc", "INFO")


def test_other_lines_are_still_scanned_and_keep_their_order(stderr: io.StringIO) -> None:
    setup("INFO", "json")
    access = AccessLog()
    access.write({"n": 1})
    logging.getLogger("other").warning("failed", extra={"digest": "0123456789abcdef" * 2})
    access.write({"n": 2})
    lines = [json.loads(line) for line in written(stderr).splitlines()]
    assert [line.get("n", line["msg"]) for line in lines] == [1, "failed", 2]
    assert lines[1]["digest"] == "[HEX]"


def test_below_the_level_nothing_is_written(stderr: io.StringIO) -> None:
    setup("WARNING", "json")
    AccessLog().write(FIELDS)
    assert written(stderr) == ""


def test_a_new_logging_setup_is_followed(stderr: io.StringIO) -> None:
    setup("INFO", "json")
    access = AccessLog()
    access.write({"n": 1})
    setup("INFO", "text")
    access.write({"n": 2})
    first, second = written(stderr).splitlines()
    assert json.loads(first)["n"] == 1 and second.endswith(f"{ACCESS_LOGGER}: rpc n=2")


def test_any_other_setup_gets_ordinary_redacted_records(stderr: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    """With any handler besides the installed one (here pytest's), access lines are records like any other."""
    setup("INFO", "json")
    logging.getLogger().addHandler(caplog.handler)
    AccessLog().write(LOOKS_SECRET)
    assert [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER] == ["rpc"]
    assert "0123456789abcdef" * 2 not in stderr.getvalue() and "[HEX]" in stderr.getvalue()


def test_access_lines_are_written_in_batches_at_most_a_moment_late(stderr: io.StringIO) -> None:
    setup("INFO", "json")
    access = AccessLog()
    access.write({"n": 1})
    assert stderr.getvalue() == ""  # waiting: no system call for it yet
    deadline = time.monotonic() + 5 * BATCH_SECONDS + 1
    while not stderr.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [json.loads(line)["n"] for line in stderr.getvalue().splitlines()] == [1]  # with nothing else logged
    for n in range(BATCH_LINES):
        access.write({"n": n})
    assert len(stderr.getvalue().splitlines()) == 1 + BATCH_LINES  # a full batch at once


def test_the_waiting_lines_are_written_at_exit() -> None:
    program = (
        "from internal.pkg.log import setup_logging\n"
        "from internal.server.accesslog import AccessLog\n"
        "setup_logging('INFO', 'json')\n"
        "AccessLog().write({'n': 1})\n"
        "AccessLog().write({'n': 2})\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert [json.loads(line)["n"] for line in done.stderr.splitlines()] == [1, 2]
