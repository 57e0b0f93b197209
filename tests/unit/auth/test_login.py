"""Login: identifiers, enumeration safety, lockout, rate limit, captcha, TOTP, rehash, audit."""

from __future__ import annotations

import asyncio
import base64

import pytest

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import DomainError, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from internal.biz.token import Caller
from internal.biz.totp import generate_code
from tests.unit.auth.fakes import World, build_world

PASSWORD = "s3cretpass"


async def registered(w: World, username: str = "alice", email: str = "alice@example.com") -> int:
    return await w.auth.register(Registration(username, PASSWORD, email, "+8613812345678"))


async def fail(w: World, attempt: LoginAttempt, client: str = "1.2.3.4") -> DomainError:
    with pytest.raises(DomainError) as err:
        await w.auth.login(attempt, client)
    return err.value


@pytest.mark.parametrize("identifier", ["alice", "ALICE", "Alice@Example.com", " alice@example.com", "+8613812345678"])
async def test_login_by_username_email_or_phone(identifier: str) -> None:
    w = build_world()
    user_id = await registered(w)
    pair = await w.auth.login(LoginAttempt(identifier, PASSWORD))
    caller = await w.tokens.authenticate(pair.access_token)
    assert caller.user_id == user_id and caller.username == "alice"
    assert pair.expires_in == 900 and len(pair.refresh_token) >= 43


@pytest.mark.parametrize(
    "identifier",
    ["bob", "alice", "nobody@example.com", "+8613900000000", "not an email@", "+12", "1alice", "x" * 200],
)
async def test_unknown_user_wrong_password_and_malformed_identifiers_look_the_same(identifier: str) -> None:
    w = build_world()
    await registered(w)
    before = w.hasher.verifications
    err = await fail(w, LoginAttempt(identifier, "wrongpass1"))
    assert isinstance(err, Unauthenticated)
    assert (err.reason, err.message, err.metadata) == ("INVALID_CREDENTIALS", "invalid credentials", {})
    # One (possibly dummy) Argon2 verification either way: similar latency.
    assert w.hasher.verifications == before + 1


async def test_empty_identifier_is_a_validation_error() -> None:
    w = build_world()
    err = await fail(w, LoginAttempt("  ", PASSWORD))
    assert isinstance(err, InvalidArgument) and err.metadata == {"field": "username"}


async def test_overlong_password_costs_one_dummy_verification() -> None:
    w = build_world()
    await registered(w)
    err = await fail(w, LoginAttempt("alice", "a1" * 10_000))
    assert err.reason == "INVALID_CREDENTIALS"
    assert w.hasher.dummy_verifications == 1


async def test_lock_after_max_failures_then_locked_even_with_right_password() -> None:
    w = build_world(max_attempts=3, lock_seconds=600)
    user_id = await registered(w)
    for _ in range(2):
        assert (await fail(w, LoginAttempt("alice", "wrongpass1"))).reason == "INVALID_CREDENTIALS"
    locked = await fail(w, LoginAttempt("alice@example.com", "wrongpass1"))  # same account, other identifier
    assert isinstance(locked, PermissionDenied) and locked.reason == "ACCOUNT_LOCKED"
    assert int(locked.metadata["unlock_time"]) == pytest.approx(w.clock() + 600, abs=2)
    verifications = w.hasher.verifications
    again = await fail(w, LoginAttempt("alice", PASSWORD))
    assert again.reason == "ACCOUNT_LOCKED"
    assert w.hasher.verifications == verifications  # no password check while locked
    status = await w.auth.lock_status(Caller(user_id=user_id), "alice")
    assert status.locked and status.failed_attempts == 3 and status.max_attempts == 3
    w.clock.now += 601
    await w.auth.login(LoginAttempt("alice", PASSWORD))
    status = await w.auth.lock_status(Caller(user_id=user_id), "alice")
    assert (status.locked, status.unlock_time, status.failed_attempts) == (False, 0, 0)
    assert "auth.lockout" in [e["event"] for e in w.audit.events]


async def test_unknown_identifiers_lock_exactly_like_real_accounts() -> None:
    w = build_world(max_attempts=2)
    for _ in range(2):
        await fail(w, LoginAttempt("ghost", "wrongpass1"))
    assert (await fail(w, LoginAttempt("ghost", "wrongpass1"))).reason == "ACCOUNT_LOCKED"


async def test_parallel_guesses_run_at_most_max_attempts_checks() -> None:
    w = build_world(max_attempts=5)
    await registered(w)
    w.hasher.verifications = 0
    results = await asyncio.gather(
        *(w.auth.login(LoginAttempt("alice", "wrongpass1")) for _ in range(20)), return_exceptions=True
    )
    reasons = sorted(getattr(r, "reason", "") for r in results)
    assert w.hasher.verifications <= 5
    assert set(reasons) <= {"INVALID_CREDENTIALS", "ACCOUNT_LOCKED"} and "ACCOUNT_LOCKED" in reasons


async def test_success_resets_the_counter() -> None:
    w = build_world(max_attempts=3)
    user_id = await registered(w)
    for _ in range(2):
        await fail(w, LoginAttempt("alice", "wrongpass1"))
    await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert (await w.auth.lock_status(Caller(user_id=user_id), "alice")).failed_attempts == 0


async def test_login_is_rate_limited_per_client_address() -> None:
    w = build_world()
    await registered(w)
    w.limiter.limit = 2
    for _ in range(2):
        await w.auth.login(LoginAttempt("alice", PASSWORD), "9.9.9.9")
    err = await fail(w, LoginAttempt("alice", PASSWORD), "9.9.9.9")
    assert isinstance(err, ResourceExhausted) and err.reason == "RATE_LIMITED"
    await w.auth.login(LoginAttempt("alice", PASSWORD), "8.8.8.8")


async def test_captcha_when_enabled_bound_to_email_identifier() -> None:
    w = build_world()
    await registered(w)
    w.captcha.enabled = True
    assert (await fail(w, LoginAttempt("alice", PASSWORD))).reason == "CAPTCHA_REQUIRED"
    await w.auth.login(LoginAttempt("ALICE@example.com", PASSWORD, "cid", "424242"))
    await w.auth.login(LoginAttempt("alice", PASSWORD, "cid2", "424242"))
    assert w.captcha.consumed == [("cid", "424242", ("alice@example.com",)), ("cid2", "424242", ())]


async def test_rehash_when_parameters_changed() -> None:
    w = build_world()
    user_id = await registered(w)
    w.hasher.params = "m=65536,t=3,p=1"
    await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert "m=65536,t=3,p=1" in w.users.rows[user_id]["password_hash"]
    await w.auth.login(LoginAttempt("alice", PASSWORD))


async def _enable_totp(w: World, user_id: int) -> bytes:
    enrollment = await w.totp.begin_enrollment(Caller(user_id=user_id))
    secret = base64.b32decode(enrollment.secret + "=" * (-len(enrollment.secret) % 8))
    w.clock.now -= 60
    await w.totp.confirm_enrollment(Caller(user_id=user_id), generate_code(secret, w.clock.now))
    w.clock.now += 60
    return secret


async def test_totp_required_invalid_and_single_use() -> None:
    w = build_world(max_attempts=5)
    user_id = await registered(w)
    secret = await _enable_totp(w, user_id)
    assert (await fail(w, LoginAttempt("alice", PASSWORD))).reason == "TOTP_REQUIRED"
    # Without the password the TOTP state is not revealed.
    assert (await fail(w, LoginAttempt("alice", "wrongpass1"))).reason == "INVALID_CREDENTIALS"
    assert (await fail(w, LoginAttempt("alice", PASSWORD, totp_code="12345"))).reason == "TOTP_INVALID"
    wrong = "000000" if generate_code(secret, w.clock.now) != "000000" else "111111"
    assert (await fail(w, LoginAttempt("alice", PASSWORD, totp_code=wrong))).reason == "TOTP_INVALID"
    code = generate_code(secret, w.clock.now)
    await w.auth.login(LoginAttempt("alice", PASSWORD, totp_code=code))
    assert (await fail(w, LoginAttempt("alice", PASSWORD, totp_code=code))).reason == "TOTP_INVALID"
    w.clock.now += 30
    await w.auth.login(LoginAttempt("alice", PASSWORD, totp_code=generate_code(secret, w.clock.now)))


async def test_totp_required_does_not_count_as_a_failure() -> None:
    w = build_world(max_attempts=2)
    user_id = await registered(w)
    await _enable_totp(w, user_id)
    for _ in range(5):
        assert (await fail(w, LoginAttempt("alice", PASSWORD))).reason == "TOTP_REQUIRED"
    assert (await w.auth.lock_status(Caller(user_id=user_id), "alice")).failed_attempts == 0


async def test_wrong_totp_codes_count_towards_the_lock() -> None:
    w = build_world(max_attempts=2)
    user_id = await registered(w)
    secret = await _enable_totp(w, user_id)
    wrong = "000000" if generate_code(secret, w.clock.now) != "000000" else "111111"
    await fail(w, LoginAttempt("alice", PASSWORD, totp_code=wrong))
    assert (await fail(w, LoginAttempt("alice", PASSWORD, totp_code=wrong))).reason == "ACCOUNT_LOCKED"


async def test_audit_has_every_attempt_and_no_pii() -> None:
    w = build_world()
    await registered(w)
    await fail(w, LoginAttempt("alice@example.com", "wrongpass1"))
    await fail(w, LoginAttempt("ghost@example.com", "wrongpass1"))
    await w.auth.login(LoginAttempt("+8613812345678", PASSWORD), "10.1.1.1")
    assert w.audit.reasons() == ["INVALID_CREDENTIALS", "INVALID_CREDENTIALS", "success"]
    text = repr(w.audit.events)
    for secret in ("alice@", "ghost@", "8613812345678", PASSWORD, "wrongpass1"):
        assert secret not in text


async def test_lock_status_only_for_own_account_or_admin() -> None:
    w = build_world()
    alice = await registered(w)
    with pytest.raises(PermissionDenied) as err:
        await w.auth.lock_status(Caller(user_id=alice + 100), "alice")
    assert err.value.reason == "PERMISSION_DENIED"
    with pytest.raises(PermissionDenied) as err:
        await w.auth.lock_status(Caller(user_id=alice), "nobody")
    assert err.value.reason == "PERMISSION_DENIED"
    admin = Caller(scopes=frozenset({"auth.admin"}))
    assert (await w.auth.lock_status(admin, "alice")).max_attempts == 5
    with pytest.raises(DomainError) as err2:
        await w.auth.lock_status(admin, "nobody")
    assert err2.value.reason == "USER_NOT_FOUND"
