"""Login: identifiers, enumeration safety, lockout, rate limit, captcha, TOTP, rehash, audit."""

from __future__ import annotations

import asyncio
import base64

import pytest

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import DomainError, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from internal.biz.ports import Caller
from internal.biz.totp import generate_code
from tests.unit.auth.fakes import World, build_world

PASSWORD = "s3cretpass"


async def registered(w: World, username: str = "alice", email: str = "alice@example.com") -> int:
    return await w.auth.register(Registration(username, PASSWORD, email, "+8613812345678"))


async def fail(w: World, attempt: LoginAttempt, client: str = "1.2.3.4") -> DomainError:
    with pytest.raises(DomainError) as err:
        await w.auth.login(attempt, client)
    return err.value


@pytest.mark.parametrize(
    "identifier",
    ["alice", "ALICE", "Alice@Example.com", " alice@example.com", "+8613812345678", "＋８６ １３８ １２３４ ５６７８"],
)
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


async def test_failures_past_the_free_attempts_need_a_growing_delay_from_that_network() -> None:
    w = build_world(free_attempts=3, delay_seconds=1.0)
    await registered(w)
    for _ in range(3):
        assert (await fail(w, LoginAttempt("alice", "wrongpass1"), "198.51.100.7")).reason == "INVALID_CREDENTIALS"
    throttled = await fail(w, LoginAttempt("alice", PASSWORD), "198.51.100.7")
    assert isinstance(throttled, ResourceExhausted) and throttled.reason == "RATE_LIMITED"
    assert throttled.metadata == {"retry_after": "1"}
    # The whole /24 is one source; the delay doubles with every further failure.
    assert (await fail(w, LoginAttempt("alice", PASSWORD), "198.51.100.200")).reason == "RATE_LIMITED"
    w.clock.now += 1
    assert (await fail(w, LoginAttempt("alice", "wrongpass1"), "198.51.100.7")).reason == "INVALID_CREDENTIALS"
    w.clock.now += 1
    assert (await fail(w, LoginAttempt("alice", PASSWORD), "198.51.100.7")).metadata == {"retry_after": "1"}
    # Another network is not slowed down at all.
    await w.auth.login(LoginAttempt("alice", PASSWORD), "203.0.113.5")


async def test_owner_logs_in_from_their_network_while_an_attacker_hammers_from_elsewhere() -> None:
    w = build_world(free_attempts=5, hard_lock_attempts=100)
    await registered(w)
    w.captcha.enabled = True
    outcomes: dict[str, int] = {}
    for i in range(300):
        w.clock.now += 0.5
        attacker = f"198.51.{100 + i % 3}.{i % 250}"  # three /24 networks
        err = await fail(w, LoginAttempt("alice", f"guess-{i}-pw", f"c{i}", "424242"), attacker)
        outcomes[err.reason] = outcomes.get(err.reason, 0) + 1
    assert set(outcomes) == {"INVALID_CREDENTIALS", "RATE_LIMITED"} and outcomes["RATE_LIMITED"] > 250
    pair = await w.auth.login(LoginAttempt("alice", PASSWORD, "owner", "424242"), "203.0.113.5")
    assert pair.access_token


async def test_hard_lock_only_at_the_account_limit_and_only_told_to_the_right_password() -> None:
    w = build_world(free_attempts=50, hard_lock_attempts=6, lock_seconds=600)
    user_id = await registered(w)
    for i in range(6):  # six networks: no per-source delay applies
        assert (await fail(w, LoginAttempt("alice", "wrongpass1"), f"10.0.{i}.1")).reason == "INVALID_CREDENTIALS"
    assert "auth.lockout" in [e["event"] for e in w.audit.events]
    # A wrong password learns nothing: the same answer as for an unknown account.
    wrong = await fail(w, LoginAttempt("alice@example.com", "wrongpass1"), "10.9.9.9")
    ghost = await fail(w, LoginAttempt("ghost@example.com", "wrongpass1"), "10.9.9.9")
    assert (wrong.reason, wrong.message, wrong.metadata) == (ghost.reason, ghost.message, ghost.metadata)
    locked = await fail(w, LoginAttempt("alice", PASSWORD), "10.9.9.9")
    assert isinstance(locked, PermissionDenied) and locked.reason == "ACCOUNT_LOCKED"
    assert int(locked.metadata["unlock_time"]) == pytest.approx(w.clock() + 600, abs=2)
    status = await w.auth.lock_status(Caller(user_id=user_id), "alice")
    assert status.locked and status.failed_attempts == 7 and status.max_attempts == 6
    w.clock.now += 601
    await w.auth.login(LoginAttempt("alice", PASSWORD), "10.9.9.9")
    status = await w.auth.lock_status(Caller(user_id=user_id), "alice")
    assert (status.locked, status.unlock_time, status.failed_attempts) == (False, 0, 0)


async def test_throttles_do_not_link_an_email_or_phone_to_a_username() -> None:
    """ASVS 6.3.8: the delay is keyed on what was typed, so no other identifier of the account changes."""
    w = build_world(free_attempts=2, hard_lock_attempts=4)
    await registered(w)
    for _ in range(2):
        await fail(w, LoginAttempt("alice", "wrongpass1"), "198.51.100.7")
    assert (await fail(w, LoginAttempt("alice", "wrongpass1"), "198.51.100.7")).reason == "RATE_LIMITED"
    for identifier in ("alice@example.com", "+8613812345678"):
        mine = await fail(w, LoginAttempt(identifier, "wrongpass1"), "198.51.100.7")
        ghost = await fail(w, LoginAttempt("ghost@example.com", "wrongpass1"), "198.51.100.7")
        assert (mine.reason, mine.metadata) == (ghost.reason, ghost.metadata) == ("INVALID_CREDENTIALS", {})
        w.audit.events.clear()
    # Four failures: the account is hard-locked now, and still no wrong password can tell.
    again = await fail(w, LoginAttempt("+8613812345678", "wrongpass1"), "203.0.113.1")
    assert again.reason == "INVALID_CREDENTIALS"


async def test_unknown_identifiers_are_throttled_exactly_like_real_accounts() -> None:
    w = build_world(free_attempts=2)
    await registered(w)
    for name in ("ghost", "alice"):
        reasons = [(await fail(w, LoginAttempt(name, "wrongpass1"))).reason for _ in range(3)]
        assert reasons == ["INVALID_CREDENTIALS", "INVALID_CREDENTIALS", "RATE_LIMITED"]


async def test_parallel_guesses_run_at_most_the_free_attempts() -> None:
    w = build_world(free_attempts=5)
    await registered(w)
    w.hasher.verifications = 0
    results = await asyncio.gather(
        *(w.auth.login(LoginAttempt("alice", "wrongpass1")) for _ in range(20)), return_exceptions=True
    )
    reasons = sorted(getattr(r, "reason", "") for r in results)
    assert w.hasher.verifications <= 5
    assert set(reasons) == {"INVALID_CREDENTIALS", "RATE_LIMITED"}


async def test_success_resets_the_counter() -> None:
    w = build_world(free_attempts=3)
    user_id = await registered(w)
    for _ in range(2):
        await fail(w, LoginAttempt("alice", "wrongpass1"))
    await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert (await w.auth.lock_status(Caller(user_id=user_id), "alice")).failed_attempts == 0


async def test_operator_lock_and_unlock() -> None:
    w = build_world()
    await registered(w)
    unlock_at = await w.auth.lock("alice", 120)
    assert unlock_at == pytest.approx(w.clock() + 120)
    assert (await fail(w, LoginAttempt("alice", PASSWORD))).reason == "ACCOUNT_LOCKED"
    await w.auth.unlock("alice")
    await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert [e["event"] for e in w.audit.events if e["actor"] == "operator"] == ["account.lock", "account.unlock"]


async def test_login_is_rate_limited_per_client_network() -> None:
    w = build_world()
    await registered(w)
    w.limiter.limit = 2
    for address in ("9.9.9.9", "9.9.9.10"):
        await w.auth.login(LoginAttempt("alice", PASSWORD), address)
    err = await fail(w, LoginAttempt("alice", PASSWORD), "9.9.9.250")  # same /24
    assert isinstance(err, ResourceExhausted) and err.reason == "RATE_LIMITED"
    await w.auth.login(LoginAttempt("alice", PASSWORD), "9.9.8.8")
    for address in ("2001:db8::1", "2001:db8::ffff:1"):
        await w.auth.login(LoginAttempt("alice", PASSWORD), address)
    assert (await fail(w, LoginAttempt("alice", PASSWORD), "2001:db8::abcd")).reason == "RATE_LIMITED"  # same /64
    assert {b for b in w.limiter.hits if b.startswith("login:")} == {
        "login:9.9.9.0/24",
        "login:9.9.8.0/24",
        "login:2001:db8::/64",
    }


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
    enrollment = await w.totp.begin_enrollment(Caller(user_id=user_id), PASSWORD)
    secret = base64.b32decode(enrollment.secret + "=" * (-len(enrollment.secret) % 8))
    w.clock.now -= 60
    await w.totp.confirm_enrollment(Caller(user_id=user_id), generate_code(secret, w.clock.now))
    w.clock.now += 60
    return secret


async def test_totp_required_invalid_and_single_use() -> None:
    w = build_world(free_attempts=5)
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
    w = build_world(free_attempts=2)
    user_id = await registered(w)
    await _enable_totp(w, user_id)
    for _ in range(5):
        assert (await fail(w, LoginAttempt("alice", PASSWORD))).reason == "TOTP_REQUIRED"
    assert (await w.auth.lock_status(Caller(user_id=user_id), "alice")).failed_attempts == 0


async def test_wrong_totp_codes_are_throttled_like_wrong_passwords() -> None:
    w = build_world(free_attempts=2)
    user_id = await registered(w)
    secret = await _enable_totp(w, user_id)
    wrong = "000000" if generate_code(secret, w.clock.now) != "000000" else "111111"
    for _ in range(2):
        assert (await fail(w, LoginAttempt("alice", PASSWORD, totp_code=wrong))).reason == "TOTP_INVALID"
    assert (await fail(w, LoginAttempt("alice", PASSWORD, totp_code=wrong))).reason == "RATE_LIMITED"


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
    assert (await w.auth.lock_status(admin, "alice")).max_attempts == 20
    with pytest.raises(DomainError) as err2:
        await w.auth.lock_status(admin, "nobody")
    assert err2.value.reason == "USER_NOT_FOUND"
