"""Users in real PostgreSQL: race-free uniqueness, encrypted PII, single-use TOTP steps, outages."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis

from internal.biz import pii
from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import Conflict, DomainError, InvalidArgument, Unavailable
from internal.biz.identifiers import username_key
from internal.biz.lockout import AttemptKey, LockoutPolicy
from internal.biz.password import Argon2Params, Argon2PasswordHasher
from internal.data.login_guard import RedisLoginGuard
from internal.data.user import PgUserRepo
from tests.integration.auth.conftest import Stack, unique, unique_phone

PASSWORD = "s3cretpass"


async def test_ten_concurrent_registrations_of_one_email_exactly_one_wins(stack: Stack) -> None:
    email = f"{unique('race')}@example.com"
    results = await asyncio.gather(
        *(stack.auth.register(Registration(unique(), PASSWORD, email)) for _ in range(10)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, int)]
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(winners) == 1 and len(losers) == 9, results
    assert {e.reason for e in losers} == {"USER_EXISTS"}
    count = await stack.pool.fetchval(
        "SELECT count(*) FROM users WHERE email_hash = $1", stack.cipher.blind_index(pii.EMAIL, email)
    )
    assert count == 1


async def test_concurrent_registrations_of_one_username_in_any_case_and_one_phone(stack: Stack) -> None:
    name = unique("Race")
    variants = [name, name.lower(), name.upper()] * 2
    results = await asyncio.gather(
        *(stack.auth.register(Registration(v, PASSWORD, f"{unique()}@example.com")) for v in variants),
        return_exceptions=True,
    )
    assert sum(isinstance(r, int) for r in results) == 1
    phone = unique_phone()
    results = await asyncio.gather(
        *(stack.auth.register(Registration(unique(), PASSWORD, f"{unique()}@example.com", phone)) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, int) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, int))


async def test_no_plaintext_pii_or_password_in_the_row(stack: Stack) -> None:
    username, email, phone = unique("Pii"), f"{unique('Mail')}@Example.com", unique_phone()
    user_id = await stack.auth.register(Registration(username, PASSWORD, email, phone, "Alice Liddell"))
    record = await stack.pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    assert record is not None
    row = dict(record)
    dump = repr(row).lower().encode() + b"".join(v for v in row.values() if isinstance(v, bytes)).lower()
    for secret in (email.lower(), email.split("@")[0].lower(), phone, phone[3:], PASSWORD, "alice liddell"):
        assert secret.encode() not in dump, secret
    assert row["password"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert row["pii_key_version"] == 1 and len(row["email_hash"]) == 64 and len(row["phone_hash"]) == 64
    # Ciphertexts are bound to their row and field.
    ctx = pii.user_context(user_id)
    assert await stack.cipher.decrypt(pii.EMAIL, row["email_encrypted"], ctx) == email.lower().encode()
    with pytest.raises(InvalidArgument):
        await stack.cipher.decrypt(pii.PHONE, row["email_encrypted"], ctx)
    with pytest.raises(InvalidArgument):
        await stack.cipher.decrypt(pii.EMAIL, row["email_encrypted"], pii.user_context(user_id + 1))
    profile = await stack.profiles.get_profile(
        await stack.tokens.authenticate((await stack.auth.login(LoginAttempt(email, PASSWORD))).access_token)
    )
    assert profile.email_masked.endswith("@example.com") and profile.name_masked == "A***"


async def test_concurrent_confusable_registrations_exactly_one_wins(stack: Stack) -> None:
    """The confusable keys are UNIQUE in PostgreSQL, so even racing twins cannot both get in."""
    base = unique("zz")
    twins = [base, base.replace("z", "Z", 1), "ｚ" + base[1:]]  # fullwidth z: the same after NFKC
    local = unique("a")
    emails = [f"{local}@example.com", f"{local.replace('a', 'а')}@example.com", f"ａ{local[1:]}@example.com"]
    results = await asyncio.gather(
        *(stack.auth.register(Registration(n, PASSWORD, f"{unique()}@example.com")) for n in twins),
        *(stack.auth.register(Registration(unique(), PASSWORD, e)) for e in emails),
        return_exceptions=True,
    )
    assert sum(isinstance(r, int) for r in results[:3]) == 1 and sum(isinstance(r, int) for r in results[3:]) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, int)), results


async def test_rows_from_before_migration_7_get_their_keys(stack: Stack) -> None:
    name = unique("old")
    user_id = await stack.auth.register(Registration(name, PASSWORD, f"{name}@example.com"))
    await stack.pool.execute("UPDATE users SET username_key = NULL, email_key_hash = NULL WHERE id = $1", user_id)
    assert await stack.profiles.backfill_identifier_keys() >= 1
    row = await stack.pool.fetchrow("SELECT username_key, email_key_hash FROM users WHERE id = $1", user_id)
    assert row["username_key"] == username_key(name) and len(row["email_key_hash"]) == 64
    with pytest.raises(Conflict):
        await stack.auth.register(Registration(unique(), PASSWORD, f"{name.upper()}@example.com".replace("O", "О")))


async def test_totp_step_is_consumed_once_under_concurrency(stack: Stack) -> None:
    user_id = await stack.auth.register(Registration(unique(), PASSWORD, f"{unique()}@example.com"))
    await stack.users.set_pending_totp(user_id, b"sealed", 1)
    assert await stack.users.enable_totp(user_id, 100)
    assert not await stack.users.enable_totp(user_id, 101)  # already enabled
    results = await asyncio.gather(*(stack.users.consume_totp_step(user_id, 105) for _ in range(10)))
    assert results.count(True) == 1
    assert not await stack.users.consume_totp_step(user_id, 104)  # older steps are dead too
    assert await stack.users.consume_totp_step(user_id, 106)


async def test_rehash_on_login_when_parameters_change(stack: Stack) -> None:
    username = unique()
    user_id = await stack.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    older = await Argon2PasswordHasher(Argon2Params(iterations=3)).hash(PASSWORD)
    await stack.pool.execute("UPDATE users SET password = $2 WHERE id = $1", user_id, older)
    await stack.auth.login(LoginAttempt(username, PASSWORD))
    stored = await stack.pool.fetchval("SELECT password FROM users WHERE id = $1", user_id)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_outages_become_service_unavailable() -> None:
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=1)
    try:
        with pytest.raises(Unavailable) as err:
            await PgUserRepo(pool).find_by_username("alice")
        assert err.value.reason == "SERVICE_UNAVAILABLE" and "127.0.0.1" not in err.value.message
    finally:
        await pool.close()
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        with pytest.raises(Unavailable) as err:
            await RedisLoginGuard(client, "x:").begin_attempt(AttemptKey("user:1", "login:x"), LockoutPolicy())
        assert err.value.reason == "SERVICE_UNAVAILABLE"
    finally:
        await client.aclose()


async def test_unknown_user_and_wrong_password_take_similar_time(stack: Stack) -> None:
    username = unique()
    await stack.auth.register(Registration(username, PASSWORD, f"{unique()}@example.com"))
    loop = asyncio.get_running_loop()

    async def timed(identifier: str) -> float:
        t0 = loop.time()
        with pytest.raises(DomainError) as err:
            await stack.auth.login(LoginAttempt(identifier, "wrongpass1"))
        assert err.value.reason == "INVALID_CREDENTIALS"
        return loop.time() - t0

    await timed(unique())  # warm-up: the dummy hash is computed once
    known = sorted([await timed(username) for _ in range(4)])[1]
    await stack.auth.login(LoginAttempt(username, PASSWORD))  # reset the real account's counter
    unknown = sorted([await timed(unique()) for _ in range(4)])[1]
    assert 0.5 < unknown / known < 2, (known, unknown)
