"""`python -m bench.adopt` runs end to end on a small population and reports its figures (never judged on speed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.harness import ROOT

pytestmark = pytest.mark.e2e


def test_bench_adopt_reports_rows_per_second_and_wall_time() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "adopt", "--users", "40", "--batch-size", "16", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["users"] == 40 and figures["batch_size"] == 16
    assert figures["rows_per_second"] > 0 and figures["adopt_wall_seconds"] >= figures["move_seconds"] > 0
