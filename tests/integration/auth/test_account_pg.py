"""Account lifecycle over real PostgreSQL and Redis: reset codes, session details, address races, deletion and purge."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from internal.biz.account import AccountUsecase
from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import Conflict, DomainError
from internal.conf.config import load_config
from internal.container import account_policy
from internal.data.senders import DevOutboxSender
from tests.integration.auth.conftest import Stack, build_accounts, unique, unique_phone

PASSWORD = "integration passphrase 1"


def accounts_for(stack: Stack, grace: timedelta = timedelta(days=30)) -> tuple[AccountUsecase, DevOutboxSender]:
    return build_accounts(stack, grace=grace)


async def register(stack: Stack, **extra: str) -> tuple[int, dict[str, str]]:
    name = unique("acct")
    fields = {"username": name, "password": PASSWORD, "email": f"{name}@example.com", "phone": unique_phone(), **extra}
    return await stack.auth.register(Registration(**fields)), fields


async def newest_code(outbox: DevOutboxSender, target: str, seen: int) -> str:
    for _ in range(200):  # the code leaves within SEND_JITTER_MS of the reply
        codes = await outbox.codes(target)
        if len(codes) > seen:
            return codes[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no code was sent")


async def test_a_reset_code_works_once_under_concurrency_and_is_stored_hashed(stack: Stack) -> None:
    accounts, outbox = accounts_for(stack)
    _, alice = await register(stack)
    reset_id = await accounts.request_reset(alice["email"])
    code = await newest_code(outbox, alice["email"], 0)
    stored: dict[bytes, Any] = await stack.redis.hgetall(f"{stack.prefix}reset:{reset_id}")
    assert set(stored) == {b"code_hash", b"user", b"attempts"} and code.encode() not in b"".join(stored.values())

    results = await asyncio.gather(
        *(accounts.confirm_reset(reset_id, code, f"new passphrase {i} here") for i in range(8)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert {r.reason for r in results if isinstance(r, DomainError)} == {"CAPTCHA_EXPIRED"}
    assert not await stack.redis.exists(f"{stack.prefix}reset:{reset_id}")


async def test_sessions_record_address_agent_and_last_use(stack: Stack) -> None:
    accounts, _ = accounts_for(stack)
    _, bob = await register(stack)
    pair = await stack.auth.login(
        LoginAttempt(bob["username"], PASSWORD, user_agent="cli/1.0"), client_addr="203.0.113.7"
    )
    caller = await stack.tokens.authenticate(pair.access_token)
    [before] = await accounts.list_sessions(caller)
    assert (before.client_address, before.user_agent, before.current) == ("203.0.113.7", "cli/1.0", True)
    assert before.last_used_at == before.created_at
    await asyncio.sleep(1.05)
    await stack.tokens.refresh(pair.refresh_token, client_addr="198.51.100.9")
    [after] = await accounts.list_sessions(caller)
    assert after.client_address == "198.51.100.9" and after.last_used_at > after.created_at


async def test_two_users_racing_for_one_new_email_one_wins(stack: Stack) -> None:
    accounts, _ = accounts_for(stack)
    callers = []
    for _ in range(2):
        _, fields = await register(stack)
        pair = await stack.auth.login(LoginAttempt(fields["username"], PASSWORD))
        callers.append(await stack.tokens.authenticate(pair.access_token))
    target = f"{unique('race')}@example.com"
    results = await asyncio.gather(
        *(accounts.change_email(c, target, "", "", PASSWORD) for c in callers), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType"]
    assert all(r.reason == "USER_EXISTS" for r in results if isinstance(r, Conflict))


async def test_deleted_account_blocks_reuse_until_purged(stack: Stack) -> None:
    accounts, _ = accounts_for(stack, grace=timedelta(0))
    user_id, carol = await register(stack)
    pair = await stack.auth.login(LoginAttempt(carol["username"], PASSWORD))
    await accounts.delete_account(await stack.tokens.authenticate(pair.access_token), PASSWORD)
    row = await stack.pool.fetchrow("SELECT username, email_encrypted, deleted_at FROM users WHERE id = $1", user_id)
    assert row["username"] == f"~{user_id}" and row["email_encrypted"] is None and row["deleted_at"] is not None
    # The start-up identifier-key backfill (rows without username_key) leaves a deleted account's indexes alone.
    kept = await stack.pool.fetchval("SELECT email_key_hash FROM users WHERE id = $1", user_id)
    await stack.profiles.backfill_identifier_keys()
    assert kept is not None
    assert await stack.pool.fetchval("SELECT email_key_hash FROM users WHERE id = $1", user_id) == kept
    assert await stack.pool.fetchval("SELECT username_key FROM users WHERE id = $1", user_id) is None
    with pytest.raises(Conflict):
        await stack.auth.register(Registration(carol["username"], PASSWORD, f"{unique('other')}@example.com"))
    with pytest.raises(Conflict):
        await stack.auth.register(Registration(unique("other"), PASSWORD, carol["email"]))

    assert await accounts.purge_deleted() >= 1
    assert await stack.pool.fetchval("SELECT count(*) FROM users WHERE id = $1", user_id) == 0
    # Free again: the same username, email and phone register as a new account.
    again = await stack.auth.register(Registration(carol["username"], PASSWORD, carol["email"], carol["phone"]))
    assert again != user_id


async def test_purge_keeps_accounts_inside_the_grace_period(stack: Stack) -> None:
    accounts, _ = accounts_for(stack, grace=timedelta(days=30))
    user_id, dave = await register(stack)
    pair = await stack.auth.login(LoginAttempt(dave["username"], PASSWORD))
    await accounts.delete_account(await stack.tokens.authenticate(pair.access_token), PASSWORD)
    await accounts.purge_deleted()
    assert await stack.pool.fetchval("SELECT deleted_at IS NOT NULL FROM users WHERE id = $1", user_id)


async def test_purge_honours_the_configured_deletion_grace(stack: Stack) -> None:
    """auth.deletion_grace, as the container turns it into the policy, decides what the purge removes."""
    policy = account_policy(load_config(None, environ={"APP__AUTH__DELETION_GRACE": "2d"}).auth)
    accounts, _ = accounts_for(stack, grace=policy.deletion_grace)
    ids = []
    for _ in range(3):
        user_id, fields = await register(stack)
        pair = await stack.auth.login(LoginAttempt(fields["username"], PASSWORD))
        await accounts.delete_account(await stack.tokens.authenticate(pair.access_token), PASSWORD)
        ids.append(user_id)
    recent, inside, past = ids
    await stack.pool.execute("UPDATE users SET deleted_at = now() - interval '47 hours' WHERE id = $1", inside)
    await stack.pool.execute("UPDATE users SET deleted_at = now() - interval '49 hours' WHERE id = $1", past)
    await accounts.purge_deleted()
    left = await stack.pool.fetch("SELECT id FROM users WHERE id = ANY($1::bigint[])", ids)
    assert sorted(r["id"] for r in left) == sorted([recent, inside])


async def test_a_revoked_session_stays_revoked_after_a_redis_flush(stack: Stack) -> None:
    """PostgreSQL is the truth (docs/security.md item 14): losing the Redis cache revives nothing."""
    accounts, _ = accounts_for(stack)
    _, erin = await register(stack)
    first = await stack.auth.login(LoginAttempt(erin["username"], PASSWORD))
    second = await stack.auth.login(LoginAttempt(erin["username"], PASSWORD))
    caller = await stack.tokens.authenticate(first.access_token)
    other = await stack.tokens.authenticate(second.access_token)  # caches "active" for it
    await accounts.revoke_session(caller, other.session_id)
    keys = [key async for key in stack.redis.scan_iter(match=f"{stack.prefix}*")]
    await stack.redis.delete(*keys)
    with pytest.raises(DomainError) as caught:
        await stack.tokens.authenticate(second.access_token)
    assert caught.value.reason == "TOKEN_REVOKED"
    assert (await stack.tokens.authenticate(first.access_token)).session_id == caller.session_id


async def test_deletion_strips_client_addresses_from_that_account_only(stack: Stack) -> None:
    accounts, _ = accounts_for(stack)
    gone_id, gone = await register(stack)
    kept_id, _ = await register(stack)
    for user_id in (gone_id, kept_id):
        await stack.audit.record("auth.login", "success", subject=str(user_id), details={"client": "192.0.2.1"})
    pair = await stack.auth.login(LoginAttempt(gone["username"], PASSWORD))
    await accounts.delete_account(await stack.tokens.authenticate(pair.access_token), PASSWORD)
    rows = await stack.pool.fetch(
        "SELECT subject, details FROM audit_events WHERE subject = ANY($1::text[])", [str(gone_id), str(kept_id)]
    )
    gone_rows = [json.loads(r["details"]) for r in rows if r["subject"] == str(gone_id)]
    kept_rows = [json.loads(r["details"]) for r in rows if r["subject"] == str(kept_id)]
    assert gone_rows and not any("client" in d for d in gone_rows)
    assert any(d.get("client") == "192.0.2.1" for d in kept_rows)
