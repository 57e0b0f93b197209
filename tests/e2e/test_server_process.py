"""The service as a real process, called by a real third-party client (`buf curl` from buf-bin)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.e2e.harness import ROOT, ServerProcess, buf, buf_curl, start_server


def test_health_serving_overall_and_per_service(server: ServerProcess) -> None:
    for service in ("", "auth.v1.Auth", "kms.v1.KMS"):
        result = buf_curl(server.grpc_port, "grpc.health.v1.Health/Check", json.dumps({"service": service}))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "SERVING"


def test_reflection_lists_both_services(server: ServerProcess) -> None:
    result = buf("curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", f"http://{server.target}")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"auth.v1.Auth", "kms.v1.KMS", "grpc.health.v1.Health"} <= services


def test_monitoring_port_serves_liveness_readiness_and_metrics(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as reply:
        assert reply.status == 200
    buf_curl(server.grpc_port, "grpc.health.v1.Health/Check")
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health"}' in body


def test_sigterm_exits_zero_within_grace_period(tmp_path: Path, server_env: dict[str, str]) -> None:
    process = start_server(tmp_path, server_env)
    process.wait_serving()
    started = time.monotonic()
    assert process.terminate(timeout=10) == 0
    assert time.monotonic() - started < 6  # grace period 5 s in tests
    assert "stopped" in process.messages()


def test_invalid_configuration_exits_nonzero_naming_the_key(tmp_path: Path, server_env: dict[str, str]) -> None:
    process = start_server(tmp_path, {**server_env, "APP__AUTH__MAX_LOGIN_ATTEMPTS": "plenty"})
    assert process.proc.wait(30) != 0
    assert "auth.max_login_attempts" in process.logs()


def test_production_refuses_the_development_seed_from_a_seed_file(tmp_path: Path, server_env: dict[str, str]) -> None:
    """The review started production mode with the development seed through kms.seed_file and got exit code 0."""
    seed_file = tmp_path / "seed"
    seed_file.write_text("development-only-seed-change-me\n")
    production = {
        **server_env,
        "APP__SECURITY__MODE": "production",
        "APP__KMS__SEED_FILE": str(seed_file),
        "APP__KMS__SALT": "a-real-salt-from-the-secret-store",
        "APP__AUTH__DEV_OUTBOX": "false",
        "APP__AUTH__JWT_SIGNING_KEY_FILE": str(tmp_path / "unused.pem"),
        "APP__SERVER__GRPC__ALLOW_INSECURE_TRANSPORT": "true",
        "APP__SERVER__HTTP__ALLOW_INSECURE_TRANSPORT": "true",
    }
    process = start_server(tmp_path, production)
    assert process.proc.wait(30) != 0
    logs = process.logs()
    assert "kms.seed_file: the development seed is refused in production mode" in logs
    assert "kms.salt" not in logs  # only what is wrong is named


def test_migrate_subcommand_reports_version(server_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "cmd/server/main.py", "migrate", "version"],
        cwd=ROOT,
        env={**server_env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("version ")
    assert "dirty" not in result.stdout


def _processes_using(folder: Path) -> list[int]:
    """PIDs whose command line or working directory points into ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = str((proc / "cwd").resolve())
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (str(folder) in cmdline or cwd.startswith(str(folder))):
            found.append(int(proc.name))
    return found


def test_embedded_default_serves_and_leaves_no_processes(tmp_path: Path) -> None:
    """README command 1: no database or Redis configured → embedded servers, started and stopped by us."""
    data_dir = (tmp_path / "d").resolve()
    process = start_server(tmp_path, {"APP__DATA__DATA_DIR": str(data_dir)})
    process.wait_serving(timeout=120)
    assert _processes_using(data_dir), "embedded servers should be running under the data folder"
    result = buf_curl(process.grpc_port, "grpc.health.v1.Health/Check")
    assert json.loads(result.stdout)["status"] == "SERVING"
    assert process.terminate(timeout=20) == 0
    deadline = time.monotonic() + 5
    while _processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_using(data_dir) == []


def test_every_command_of_the_entry_script_has_help() -> None:
    """One front door: every command (the COMMANDS table) answers --help; the supervisor has no entry of its own."""
    main = [sys.executable, str(ROOT / "cmd" / "server" / "main.py")]
    top = subprocess.run([*main, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    commands = ("serve", "migrate", "kms", "credentials", "users", "dev")
    assert all(name in top.stdout for name in commands), top.stdout
    for name in commands:
        result = subprocess.run([*main, name, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    supervisor = subprocess.run(
        [sys.executable, "-m", "internal.server.supervisor", "--help"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert supervisor.stdout == b""  # importing the module runs nothing
