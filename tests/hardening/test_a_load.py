"""Three replicas under a mixed load from several client processes, then every invariant."""

from __future__ import annotations

from tests.hardening.cluster import Cluster
from tests.hardening.invariants import check_invariants
from tests.hardening.load import run_load
from tests.hardening.summary import SUMMARY

LOAD_SECONDS = 16.0


def test_replicas_under_mixed_load(cluster: Cluster, hardening_database: str, credential: str) -> None:
    outcome = run_load(cluster, credential, duration=LOAD_SECONDS, workers=3, rotate_every=3.0, seed=1)

    SUMMARY.load.append("steady load: " + outcome.describe())
    ops = outcome.calls
    top = ", ".join(f"{k.split()[0]} {n}" for k, n in sorted(ops.items()) if k.endswith(" OK"))
    SUMMARY.load.append(f"  OK by method: {top}")
    SUMMARY.load.append(
        f"  registered {outcome.count('users')} users (+{outcome.count('lock_users')} lock-test users), "
        f"{outcome.count('ciphertexts')} ciphertexts, {outcome.count('refresh_ok')} refreshes, "
        f"{outcome.count('logged_out')} logouts, retries {sum(r.retries for r in outcome.results)}"
    )

    errors = ", ".join(f"{k} {n}" for k, n in sorted(outcome.counter("reasons").items()))
    SUMMARY.load.append(f"  expected errors: {errors or 'none'}")
    report = check_invariants(cluster, hardening_database, credential, outcome, "steady load")
    assert not report.problems, report.problems
    assert len(outcome.rotations) >= 3
    assert sum(r.retries for r in outcome.results) == 0, outcome.counter("reasons")
    assert outcome.count("users") > 0 and outcome.count("ciphertexts") > 0 and outcome.count("refresh_ok") > 0
