"""The README's quickstart, run line by line as a new user would: the service started with README command 1
on the embedded default (a fresh project folder, nothing configured), then every quickstart line in one
shell beside it, each line's output checked.

The one change to the lines: the HTTP address, since port 8000 may be taken on a shared machine; the
service gets the same free port through ``APP__SERVER__HTTP__ADDR``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, free_port

README = ROOT / "README.md"
README_HTTP = "http://127.0.0.1:8000"


def _sh_blocks(text: str) -> list[list[str]]:
    return [block.strip("\n").splitlines() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def serve_command() -> str:
    """Command 1 of the README's first block, without the install steps before it (done for this run)."""
    first = _sh_blocks(README.read_text())[0]
    line = next(line for line in first if "cmd/server/main.py" in line and not line.startswith("#"))
    return line.split("&&")[-1].strip()


def quickstart_lines() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    return [line for line in _sh_blocks(section)[0] if line.strip() and not line.startswith("#")]


@dataclass
class Step:
    line: str
    output: list[str] = field(default_factory=list)
    rc: int | None = None
    variables: dict[str, str] = field(default_factory=dict)


def _json(step: Step) -> dict[str, object]:
    assert len(step.output) == 1, step
    value = json.loads(step.output[0])
    assert isinstance(value, dict)
    return value


def _var(step: Step, name: str) -> str:
    return step.variables[name]


CHECKS: dict[str, Callable[[Step], None]] = {
    "H=": lambda s: None,
    "get()": lambda s: None,
    "credentials create": lambda s: _assert(_var(s, "T").startswith("akms_"), s),
    "/kms/encrypt": lambda s: _assert(len(base64.b64decode(_var(s, "C"), validate=True)) > 5, s),
    "/kms/decrypt": lambda s: _assert(_json(s).get("plaintext") == "aGVsbG8=", s),
    "/auth/captcha": lambda s: _assert(len(_var(s, "ID")) >= 16, s),
    "dev outbox": lambda s: _assert(_var(s, "CODE").isdigit(), s),
    "/auth/register": lambda s: _assert(bool(_json(s).get("message")) and "code" not in _json(s), s),
    "/auth/login": lambda s: _assert(_var(s, "AT").count(".") == 2, s),
    "/auth/profile": lambda s: _assert(
        _json(s).get("username") == "alice" and _json(s).get("emailMasked") == "a***@example.com", s
    ),
}


def _assert(ok: bool, step: Step) -> None:
    assert ok, step


def _check_for(line: str) -> Callable[[Step], None]:
    matches = [check for key, check in CHECKS.items() if key in line]
    assert len(matches) == 1, f"the test has no single check for this README line: {line}"
    return matches[0]


def _script(lines: list[str]) -> str:
    parts = []
    for i, line in enumerate(lines):
        # curl prints its JSON without a final newline: the marker starts on a line of its own.
        parts += [f'echo "@@step {i}"', line, "printf '\\n@@rc %s\\n' $?"]
        assigned = re.match(r"^([A-Z]+)=\$\(", line)
        if assigned:
            parts.append(f'echo "@@var {assigned[1]}=${assigned[1]}"')
    return "\n".join(parts) + "\n"


def _steps(lines: list[str], stdout: str) -> list[Step]:
    steps = [Step(line) for line in lines]
    current: Step | None = None
    for out in stdout.splitlines():
        if out.startswith("@@step "):
            current = steps[int(out.split()[1])]
        elif current is None:
            raise AssertionError(f"output before the first step: {out}")
        elif out.startswith("@@rc "):
            current.rc = int(out.split()[1])
        elif out.startswith("@@var "):
            name, _, value = out[len("@@var ") :].partition("=")
            current.variables[name] = value
        elif out:
            current.output.append(out)
    return steps


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder: the code and the venv of this checkout, no .data, nothing configured."""
    folder = tmp_path / "p"
    folder.mkdir()
    for name in ("cmd", "configs"):
        (folder / name).symlink_to(ROOT / name)
    (folder / ".venv").symlink_to(Path(sys.executable).parents[1])
    return folder


@pytest.fixture
def new_user_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APP__", "TEST_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["APP__SERVER__GRPC__ADDR"] = f"127.0.0.1:{free_port()}"
    env["APP__SERVER__HTTP__ADDR"] = f"127.0.0.1:{free_port()}"
    return env


@pytest.fixture
def service(project: Path, new_user_env: dict[str, str]) -> Iterator[str]:
    """README command 1 in the project folder; yields its HTTP base URL once it is ready."""
    base = "http://" + new_user_env["APP__SERVER__HTTP__ADDR"]
    log_path = project.parent / "service.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            shlex.split(serve_command()), cwd=project, env=new_user_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "service not ready:\n" + log_path.read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        yield base
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_quickstart_runs_as_written(project: Path, new_user_env: dict[str, str], service: str) -> None:
    lines = quickstart_lines()
    checks = [_check_for(line) for line in lines]
    assert any("credentials create" in line for line in lines) and any("/auth/profile" in line for line in lines)
    run = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", _script([line.replace(README_HTTP, service) for line in lines])],
        cwd=project,
        env=new_user_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    steps = _steps(lines, run.stdout)
    for step, check in zip(steps, checks, strict=True):
        assert step.rc == 0, f"{step}\nstderr:\n{run.stderr[-3000:]}"
        check(step)
    assert "Traceback" not in run.stderr
