"""The audit policy (biz.audit.DenialAuditLimit) over fakes, and the one bounding rule of the audit writer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from internal.biz.audit import DenialAuditLimit
from internal.biz.ports import RateDecision
from internal.data.audit import MAX_DETAIL_CHARS, MAX_DETAIL_KEY_CHARS, MAX_DETAIL_KEYS, bounded_details
from internal.pkg.log import request_network


class RecordingAudit:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def record(
        self,
        event: str,
        outcome: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        details: Mapping[str, str | int | bool] | None = None,
    ) -> None:
        self.rows.append({"event": event, "actor": actor, "subject": subject, "details": dict(details or {})})


class CountingLimiter:
    """Allows the first ``limit`` hits per bucket."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        self.hits[bucket] = self.hits.get(bucket, 0) + 1
        return RateDecision(self.hits[bucket] <= limit, 0.0 if self.hits[bucket] <= limit else window_seconds)

    def reset(self) -> None:
        self.hits.clear()


class MemorySuppressed:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def add(self, network: str) -> None:
        self.counts[network] = self.counts.get(network, 0) + 1

    async def take(self, network: str) -> int:
        return self.counts.pop(network, 0)


async def test_anonymous_denials_are_bounded_per_network_and_the_rest_counted() -> None:
    audit, limiter, suppressed = RecordingAudit(), CountingLimiter(), MemorySuppressed()
    limited = DenialAuditLimit(audit, limiter, suppressed, limit=2, window=60)
    token = request_network.set("198.51.100.0/24")
    try:
        for _ in range(5):
            await limited.record("access.denied", "no_credential", subject="Encrypt")
        await limited.record("access.denied", "no_scope", actor="svc", subject="Encrypt")  # identified: always
        await limited.record("auth.login", "failure")
        limiter.reset()  # the window has passed
        await limited.record("access.denied", "no_credential", subject="Encrypt")
    finally:
        request_network.reset(token)
    anonymous = [r["details"] for r in audit.rows if r["event"] == "access.denied" and r["actor"] is None]
    assert anonymous == [
        {"network": "198.51.100.0/24"},
        {"network": "198.51.100.0/24"},
        {"network": "198.51.100.0/24", "suppressed": 3},
    ]
    assert [r["event"] for r in audit.rows].count("auth.login") == 1
    assert any(r["actor"] == "svc" for r in audit.rows)
    assert suppressed.counts == {}


def test_details_are_bounded_by_one_rule() -> None:
    details: dict[str, str | int | bool] = {f"k{i}": "v" for i in range(MAX_DETAIL_KEYS + 10)}
    details["k0"] = "x" * 1000
    details["k1"] = 12345
    details["k2"] = True
    bounded = bounded_details(details)
    assert len(bounded) == MAX_DETAIL_KEYS
    assert bounded["k0"] == "x" * MAX_DETAIL_CHARS and bounded["k1"] == 12345 and bounded["k2"] is True
    assert bounded_details({"y" * 100: "v"}) == {"y" * MAX_DETAIL_KEY_CHARS: "v"}
    assert bounded_details(None) == {}
