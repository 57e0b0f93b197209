"""Topology fixtures: the work folder, the component check, the printed summary.

Every test here starts the real components it needs (PgBouncer, PostgreSQL standby, Redis Sentinel,
Redis Cluster, HAProxy) from Debian's packages. Without one of those packages the tests are skipped with
a loud banner: ``.ci/run`` installs them, so in CI they always run.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.cluster import data_root
from tests.topology.components import missing_components, topology_root
from tests.topology.summary import SUMMARY

SUMMARY_FILE = data_root() / "topology-summary.txt"
_started = time.monotonic()
_outcomes: dict[str, str] = {}
_MISSING = missing_components()
_BANNER = (
    "TOPOLOGY SUITE SKIPPED: missing Debian packages {}. Install them with "
    "`apt-get install -y pgbouncer redis-sentinel haproxy` (.ci/run does)."
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/topology/" in item.nodeid:
            item.add_marker(pytest.mark.topology)
            item.add_marker(pytest.mark.e2e)
            if _MISSING:
                item.add_marker(pytest.mark.skip(reason=_BANNER.format(", ".join(_MISSING))))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/topology/" in report.nodeid and (report.when == "call" or report.outcome != "passed"):
        _outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _MISSING and _outcomes:
        terminalreporter.write_sep("!", _BANNER.format(", ".join(_MISSING)), red=True, bold=True)
        return
    if SUMMARY.empty and not _outcomes:
        return
    passed = sum(1 for o in _outcomes.values() if o == "passed")
    text = SUMMARY.render(time.monotonic() - _started, f"{passed}/{len(_outcomes)} passed")
    SUMMARY_FILE.write_text(text)
    terminalreporter.write_sep("=", "topology summary")
    terminalreporter.write(text)
    terminalreporter.write_line(f"(kept in {SUMMARY_FILE})")


@pytest.fixture(scope="session")
def topology_dir() -> Iterator[Path]:
    """/tmp/authkms-topology-<id> (PostgreSQL and PgBouncer run as the postgres user and need to reach it);
    removed after a clean run, kept and named in the summary after a failure."""
    path = topology_root(Path("/tmp") / f"authkms-topology-{uuid.uuid4().hex[:10]}")
    yield path
    if all(outcome == "passed" for outcome in _outcomes.values()):
        shutil.rmtree(path, ignore_errors=True)
    else:
        SUMMARY.failures.append(f"component and server logs kept in {path}")
