"""Audit rows for a whole scenario: every attempt recorded, no PII, password, token or code in them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator

from internal.biz.audit import DenialAuditLimit
from internal.biz.auth import LoginAttempt, Registration
from internal.biz.credentials import CredentialUsecase
from internal.biz.errors import DomainError
from internal.data.audit_suppressed import RedisSuppressedDenials
from internal.data.credentials import PgCredentialRepo
from internal.data.ratelimit import RedisRateLimiter
from internal.pkg.log import request_id, request_network
from tests.integration.auth.conftest import Stack, unique, unique_phone

PASSWORD = "s3cretpass"


async def test_scenario_is_audited_without_secrets(stack: Stack) -> None:
    rid = uuid.uuid4().hex
    token = request_id.set(rid)
    try:
        username, email, phone = unique(), f"{unique()}@example.com", unique_phone()
        user_id = await stack.auth.register(Registration(username, PASSWORD, email, phone), "10.9.8.7")
        for identifier in (email, f"{unique()}@example.com"):
            with contextlib.suppress(DomainError):
                await stack.auth.login(LoginAttempt(identifier, "wrongpass1"), "10.9.8.7")
        pair = await stack.auth.login(LoginAttempt(phone, PASSWORD), "10.9.8.7")
        second = await stack.tokens.refresh(pair.refresh_token)
        with contextlib.suppress(DomainError):
            await stack.tokens.refresh(pair.refresh_token)
        await stack.tokens.logout(
            await stack.tokens.authenticate((await stack.auth.login(LoginAttempt(username, PASSWORD))).access_token)
        )
    finally:
        request_id.reset(token)
    rows = await stack.pool.fetch(
        "SELECT event, outcome, actor, subject, details FROM audit_events WHERE request_id = $1 ORDER BY id", rid
    )
    summary = [(r["event"], r["outcome"], json.loads(r["details"]).get("reason")) for r in rows]
    assert summary == [
        ("auth.register", "success", None),
        ("auth.login", "failure", "INVALID_CREDENTIALS"),
        ("auth.login", "failure", "INVALID_CREDENTIALS"),
        ("auth.login", "success", None),
        ("auth.refresh_token_reuse", "denied", None),
        ("auth.login", "success", None),
        ("auth.logout", "success", None),
    ]
    assert rows[1]["subject"] == str(user_id) and rows[2]["subject"] is None
    text = repr([dict(r) for r in rows])
    for secret in (
        email,
        email.split("@")[0],
        phone,
        phone[1:],
        PASSWORD,
        "wrongpass1",
        pair.refresh_token,
        second.refresh_token,
        pair.access_token.split(".")[1],
    ):
        assert secret not in text


@contextlib.contextmanager
def calling_from(network: str) -> Iterator[None]:
    token = request_network.set(network)
    try:
        yield
    finally:
        request_network.reset(token)


async def test_anonymous_refusals_write_a_bounded_number_of_rows_per_network(stack: Stack) -> None:
    """A flood of calls without (valid) credentials must not fill audit_events: `limit` rows per client
    network and window, then one row saying how many were left out; other networks and events unaffected."""
    limiter = RedisRateLimiter(stack.redis, stack.prefix)
    limited = DenialAuditLimit(
        stack.audit, limiter, RedisSuppressedDenials(stack.redis, stack.prefix), limit=3, window=0.5
    )
    credentials = CredentialUsecase(PgCredentialRepo(stack.pool), limited)
    flood, other = f"198.51.{uuid.uuid4().int % 250}.0/24", "203.0.113.0/24"

    async def refused(token: str | None) -> None:
        with contextlib.suppress(DomainError):
            await credentials.authorize(token, "kms.encrypt", action="Encrypt")

    rid = uuid.uuid4().hex
    rid_token = request_id.set(rid)
    try:
        with calling_from(flood):
            for token in [None, "akms_" + "x" * 43] * 10:
                await refused(token)
        with calling_from(other):
            await refused(None)
        await asyncio.sleep(0.6)  # the window has passed: the next row tells what was left out
        with calling_from(flood):
            await refused(None)
        await stack.audit.record("auth.login", "failure", details={"reason": "INVALID_CREDENTIALS"})
    finally:
        request_id.reset(rid_token)
    rows = await stack.pool.fetch("SELECT event, details FROM audit_events WHERE request_id = $1 ORDER BY id", rid)
    denied = [json.loads(r["details"]) for r in rows if r["event"] == "access.denied"]
    assert [d.get("suppressed") for d in denied if d["network"] == flood] == [None, None, None, 17]
    assert [d["network"] for d in denied].count(other) == 1
    assert [r["event"] for r in rows].count("auth.login") == 1


async def test_every_writer_goes_through_one_bound(stack: Stack) -> None:
    """Whatever a caller passes, the row fits its columns and the details stay bounded."""
    rid = uuid.uuid4().hex
    token = request_id.set(rid)
    try:
        await stack.audit.record(
            "e" * 100, "o" * 40, actor="a" * 300, subject="s" * 300, details={"keys": "k," * 500, "n": 7}
        )
    finally:
        request_id.reset(token)
    row = await stack.pool.fetchrow(
        "SELECT event, outcome, actor, subject, details FROM audit_events WHERE request_id = $1", rid
    )
    assert row is not None
    assert (len(row["event"]), len(row["outcome"]), len(row["actor"]), len(row["subject"])) == (64, 16, 128, 128)
    assert json.loads(row["details"]) == {"keys": ("k," * 500)[:200], "n": 7}
