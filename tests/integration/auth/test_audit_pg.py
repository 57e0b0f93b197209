"""Audit rows for a whole scenario: every attempt recorded, no PII, password, token or code in them."""

from __future__ import annotations

import contextlib
import json
import uuid

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import DomainError
from internal.pkg.log import request_id
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
