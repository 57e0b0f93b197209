"""`python -m bench --quick` runs end to end (real servers, 1 and 2 workers) and reports every metric."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT

METRICS = (
    "encrypt_check_ratio",
    "encrypt_rps",
    "check_rps",
    "batch_aesgcm_ratio",
    "batch_fields_per_s",
    "aesgcm_per_s",
    "batch_floor_aesgcm_ratio",
    "db_queries_per_encrypt",
    "login_argon2_ratio",
    "login_p50_ms",
    "argon2_hash_ms",
    "register_per_s",
    "login_per_s",
    "encrypt_rps_1_worker",
    "encrypt_rps_2_workers",
    "workers_2_1_ratio",
    "http_grpc_encrypt_ratio",
    "http_encrypt_rps",
    "http_grpc_login_p50_ratio",
    "http_login_p50_ms",
    "cpu_bare_check_us",
    "cpu_check_us",
    "cpu_check_bare_ratio",
    "cpu_encrypt_us",
    "cpu_encrypt_check_ratio",
    "cpu_bare_encrypt_us",
    "cpu_bare_encrypt_check_ratio",
    "cpu_encrypt_bare_ratio",
    "cpu_batch_field_us",
    "cpu_transport_batch_field_us",
    "cpu_batch_bare_ratio",
    "batch_checks_field_us",
    "cpu_batch_checked_floor_us",
    "cpu_batch_checked_floor_ratio",
    "envelope_aesgcm_ratio",
    "envelope_fields_per_s",
    "envelope_no_prefetch_aesgcm_ratio",
    "envelope_rpcs_per_100k",
    "envelope_rpcs_first_100k",
    "batch_grpc_aesgcm_ratio",
    "batch_rpcs_per_100k",
)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_quick_bench_reports_every_metric(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "PASS" in result.stdout or "FAIL" in result.stdout
    metrics = json.loads(output.read_text())["metrics"]
    assert set(METRICS) <= set(metrics)
    for name in METRICS:
        value = metrics[name]
        assert isinstance(value, int | float), (name, value)
        if name == "db_queries_per_encrypt":
            assert value >= 0, (name, value)
        else:
            assert value > 0, (name, value)
    # Steady state asks for one key per 10,000 values; a fresh encryptor at most one more (the key asked ahead).
    assert metrics["envelope_rpcs_per_100k"] <= metrics["envelope_rpcs_first_100k"] <= 11
