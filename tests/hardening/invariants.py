"""Nothing lost: the checks run after the load and after every fault, on what the clients recorded."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import introspection_credential
from tests.hardening.cluster import Cluster, health_status, in_threads, sql
from tests.hardening.load import LoadOutcome
from tests.hardening.summary import SUMMARY
from tests.hardening.workload import MAX_WRONG, NEVER, error_reason

HARD_LOCK_CONF = 5  # APP__AUTH__HARD_LOCK_ATTEMPTS in cluster.server_env


@dataclass
class Report:
    phase: str
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def _retrying(targets: list[str], i: int, fn: Any) -> Any:
    """Call ``fn(channel)`` on target i, then the others, while the answer is UNAVAILABLE."""
    last: grpc.RpcError | None = None
    for attempt in range(len(targets) * 2):
        with grpc.insecure_channel(targets[(i + attempt) % len(targets)]) as channel:
            try:
                return fn(channel)
            except grpc.RpcError as err:
                last = err
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                time.sleep(0.3)
    assert last is not None
    raise last


def check_invariants(
    cluster: Cluster, database_url: str, credential: str, outcome: LoadOutcome, phase: str, *, locks: bool = True
) -> Report:
    report = Report(phase)
    targets = cluster.targets
    md = (("authorization", f"Bearer {credential}"),)

    # 0. The load itself: no INTERNAL/UNKNOWN/DEADLINE_EXCEEDED, no wrong answer, nothing given up on.
    for bad in outcome.bad:
        report.problems.append(f"during load: {bad}")
    never = {k: n for k, n in outcome.calls.items() if k.split()[-1] in NEVER}
    report.check(not never, f"RPCs answered {never}")
    report.counts["RPCs answered without INTERNAL/UNKNOWN/deadline"] += outcome.total_calls
    report.check(
        not any(code.split()[0] in ("INTERNAL", "UNKNOWN") for code in outcome.rotation_errors),
        f"RotateDataKey errors {dict(outcome.rotation_errors)}",
    )

    # 1. Every registered user can log in.
    users = [u for r in outcome.results for u in r.users]

    def login(item: tuple[int, tuple[str, str]]) -> str:
        i, (username, password) = item
        try:
            reply = _retrying(
                targets,
                i,
                lambda ch: auth_pb2_grpc.AuthStub(ch).Login(
                    auth_pb2.LoginRequest(username=username, password=password), timeout=15
                ),
            )
            return "OK" if reply.access_token else "no token"
        except grpc.RpcError as err:
            return f"{err.code().name} {error_reason(err)}"

    logins = Counter(in_threads(login, list(enumerate(users)), 6))
    report.check(set(logins) <= {"OK"}, f"registered users that cannot log in: {dict(logins)}")
    report.counts["registered users that log in"] += logins["OK"]

    # 2. Every ciphertext returned during the run decrypts to its plaintext.
    items = [c for r in outcome.results for c in r.ciphertexts]
    lost = 0
    for start in range(0, len(items), 300):
        chunk = items[start : start + 300]
        request = kms_pb2.DecryptBatchRequest(
            items=[kms_pb2.DecryptItem(ciphertext=ct, field=f, context=c) for f, c, _, ct in chunk]
        )
        reply = _retrying(
            targets, start, lambda ch, rq=request: kms_pb2_grpc.KMSStub(ch).DecryptBatch(rq, metadata=md, timeout=30)
        )
        for (_, _, plaintext, _), result in zip(chunk, reply.results, strict=True):
            lost += not (result.status.code == 0 and result.plaintext == plaintext)
    report.check(lost == 0, f"{lost} of {len(items)} ciphertexts no longer decrypt to their plaintext")
    report.counts["ciphertexts decrypted to their plaintext"] += len(items) - lost

    # 3. Exactly one active version of every named key; every rotation made a distinct version.
    active = sql(
        database_url,
        "SELECT k.name, count(d.version) AS n FROM kms_keys k "
        "LEFT JOIN kms_data_keys d ON d.key_name = k.name AND d.status = 'active' GROUP BY k.name",
    )
    wrong = {r["name"]: r["n"] for r in active if r["n"] != 1}
    report.check(bool(active) and not wrong, f"active versions per key: {wrong or 'no keys'}")
    report.check(len(set(outcome.rotations)) == len(outcome.rotations), "two rotations returned the same key")
    missing = sql(database_url, "SELECT count(*) AS n FROM kms_data_keys WHERE encrypted_key IS NULL")[0]["n"]
    report.check(missing == 0, f"{missing} data keys lost their material")
    report.counts["'exactly one active version per key' checks"] += 1
    report.counts["key rotations under load"] += len(outcome.rotations)

    # 4. No refresh token accepted twice; every deliberate reuse revoked its family.
    accepted = Counter(t for r in outcome.results for t in r.refresh_ok)
    twice = [t for t, n in accepted.items() if n > 1]
    report.check(not twice, f"{len(twice)} refresh tokens were accepted twice")
    report.counts["refresh tokens accepted exactly once"] += len(accepted)
    reuses = [x for r in outcome.results for x in r.reuses]
    wrong = [x for x in reuses if x != ("REFRESH_TOKEN_REUSED", "TOKEN_REVOKED")]
    report.check(not wrong, f"reuse answers {Counter(wrong)} (want REFRESH_TOKEN_REUSED, then TOKEN_REVOKED)")
    report.counts["refresh-token reuses detected (family revoked)"] += len(reuses) - len(wrong)
    undecided = sum(r.ambiguous["RefreshToken reuse check met the outage"] for r in outcome.results)
    report.counts["reuse checks undecided (every retry met the outage)"] += undecided

    # 5. Lock counters match the wrong-password logins sent.
    if locks:
        lock_users = [u for r in outcome.results for u in r.lock_users if u.definite]
        excluded = sum(1 for r in outcome.results for u in r.lock_users if not u.definite)

        def lock_status(item: tuple[int, Any]) -> str:
            i, user = item
            reply = _retrying(
                targets,
                i,
                lambda ch: auth_pb2_grpc.AuthStub(ch).LockStatus(
                    auth_pb2.LockStatusRequest(username=user.username),
                    metadata=(("authorization", f"Bearer {user.access}"),),
                    timeout=15,
                ),
            )
            want_attempts = user.wrong_sent  # every failure counts, also after the lock
            want_locked = user.wrong_sent >= HARD_LOCK_CONF
            if reply.failed_attempts != want_attempts or reply.locked != want_locked:
                return (
                    f"{user.username}: sent {user.wrong_sent} wrong, LockStatus failed_attempts="
                    f"{reply.failed_attempts} locked={reply.locked}"
                )
            return "OK"

        answers = in_threads(lock_status, list(enumerate(lock_users)), 6)
        mismatches = [a for a in answers if a != "OK"]
        report.check(not mismatches, f"lock counters differ: {mismatches[:5]}")
        report.counts["lock counters equal to wrong logins sent"] += len(answers) - len(mismatches)
        report.counts["wrong-password logins sent"] += sum(u.wrong_sent for u in lock_users)
        report.counts["lock-test users excluded (attempt outcome ambiguous)"] += excluded
        assert all(u.wrong_sent <= MAX_WRONG for u in lock_users)

    # 6. Nothing revoked comes back: every logged-out access token stays revoked.
    logged_out = [t for r in outcome.results for t in r.logged_out]
    introspector = (("authorization", f"Bearer {introspection_credential(database_url)}"),)

    def introspect(item: tuple[int, str]) -> bool:
        i, token = item
        reply = _retrying(
            targets,
            i,
            lambda ch: auth_pb2_grpc.AuthStub(ch).IntrospectToken(
                auth_pb2.IntrospectTokenRequest(token=token), metadata=introspector, timeout=15
            ),
        )
        return reply == auth_pb2.IntrospectTokenReply()  # inactive, and nothing else said

    still_revoked = sum(in_threads(introspect, list(enumerate(logged_out)), 6))
    report.check(still_revoked == len(logged_out), f"{len(logged_out) - still_revoked} logged-out tokens came back")
    report.counts["logged-out access tokens still revoked"] += still_revoked

    # 7. Every replica alive and SERVING.
    for replica in cluster.replicas:
        report.check(replica.proc.poll() is None, f"replica {replica.target} exited")
        report.check(
            health_status(replica.target) == health_pb2.HealthCheckResponse.SERVING, f"{replica.target} not SERVING"
        )
    report.counts["replica health checks SERVING"] += len(cluster.replicas)

    SUMMARY.invariants.update(report.counts)
    verdict = "OK" if not report.problems else f"{len(report.problems)} PROBLEM(S)"
    SUMMARY.invariant_runs.append(
        f"after {phase}: {verdict} — {logins['OK']} users log in, {len(items) - lost}/{len(items)} ciphertexts "
        f"decrypt, one active version of each of {len(active)} keys, {len(accepted)} refresh tokens once, "
        f"{still_revoked} revoked stay revoked"
    )
    if report.problems:
        SUMMARY.failures += [f"{phase}: {p}" for p in report.problems]
    return report
