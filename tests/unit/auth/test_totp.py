"""TOTP math (RFC 6238 vectors) and enrollment / disable use cases."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from internal.biz import pii
from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import DomainError, FailedPrecondition, InvalidArgument, Unauthenticated
from internal.biz.ports import Caller
from internal.biz.totp import encode_secret, generate_code, matching_step, otpauth_uri
from tests.unit.auth.fakes import World, build_world

RFC_SECRET = b"12345678901234567890"
PASSWORD = "s3cretpass"


@pytest.mark.parametrize(
    ("at", "code"),
    [(59, "287082"), (1111111109, "081804"), (1111111111, "050471"), (1234567890, "005924"), (2000000000, "279037")],
)
def test_rfc6238_sha1_vectors_truncated_to_six_digits(at: int, code: str) -> None:
    assert generate_code(RFC_SECRET, at) == code
    assert matching_step(RFC_SECRET, code, at) == at // 30


def test_window_is_one_step_either_side() -> None:
    now = 1_700_000_000
    step = now // 30
    for offset in (-1, 0, 1):
        assert matching_step(RFC_SECRET, generate_code(RFC_SECRET, (step + offset) * 30), now) == step + offset
    for offset in (-3, -2, 2, 3):
        assert matching_step(RFC_SECRET, generate_code(RFC_SECRET, (step + offset) * 30), now) is None


def test_uri_and_secret_encoding() -> None:
    secret = bytes(range(20))
    assert "=" not in encode_secret(secret)
    uri = urlsplit(otpauth_uri(secret, "alice", "AuthKMS Test"))
    query = parse_qs(uri.query)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert query["secret"] == [encode_secret(secret)] and query["issuer"] == ["AuthKMS Test"]
    assert (query["digits"], query["period"], query["algorithm"]) == (["6"], ["30"], ["SHA1"])
    assert uri.path.endswith(":alice")


def decode(secret: str) -> bytes:
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


async def enrolled_world() -> tuple[World, Caller, bytes]:
    w = build_world()
    user_id = await w.auth.register(Registration("alice", PASSWORD, "alice@example.com"))
    caller = Caller(user_id=user_id)
    enrollment = await w.totp.begin_enrollment(caller, PASSWORD)
    return w, caller, decode(enrollment.secret)


async def test_begin_stores_the_secret_encrypted_and_pending() -> None:
    w, caller, secret = await enrolled_world()
    assert len(secret) == 20
    row = w.users.rows[caller.user_id or 0]
    assert row["totp_enabled"] is False
    assert secret not in row["totp_secret_encrypted"]
    ctx = pii.user_context(caller.user_id or 0)
    assert await w.cipher.decrypt(pii.TOTP_SECRET, row["totp_secret_encrypted"], ctx) == secret
    assert not (await w.profiles.get_profile(caller)).totp_enabled


async def test_confirm_with_wrong_then_right_code() -> None:
    w, caller, secret = await enrolled_world()
    good = generate_code(secret, w.clock.now)
    bad = "000000" if good != "000000" else "111111"
    with pytest.raises(Unauthenticated) as err:
        await w.totp.confirm_enrollment(caller, bad)
    assert err.value.reason == "TOTP_INVALID"
    with pytest.raises(InvalidArgument):
        await w.totp.confirm_enrollment(caller, "12ab56")
    await w.totp.confirm_enrollment(caller, good)
    assert (await w.profiles.get_profile(caller)).totp_enabled
    with pytest.raises(FailedPrecondition) as err2:
        await w.totp.confirm_enrollment(caller, good)
    assert err2.value.reason == "TOTP_ALREADY_ENABLED"
    with pytest.raises(FailedPrecondition) as err2:
        await w.totp.begin_enrollment(caller, PASSWORD)
    assert err2.value.reason == "TOTP_ALREADY_ENABLED"


async def test_confirm_without_enrollment() -> None:
    w = build_world()
    caller = Caller(user_id=await w.auth.register(Registration("alice", PASSWORD, "alice@example.com")))
    with pytest.raises(FailedPrecondition) as err:
        await w.totp.confirm_enrollment(caller, "123456")
    assert err.value.reason == "TOTP_NOT_ENROLLED"
    with pytest.raises(FailedPrecondition) as err:
        await w.totp.disable(caller, PASSWORD, "123456")
    assert err.value.reason == "TOTP_NOT_ENROLLED"


async def test_disable_needs_password_and_a_fresh_code() -> None:
    w, caller, secret = await enrolled_world()
    w.clock.now -= 30
    await w.totp.confirm_enrollment(caller, generate_code(secret, w.clock.now))
    w.clock.now += 30
    code = generate_code(secret, w.clock.now)
    with pytest.raises(Unauthenticated) as err:
        await w.totp.disable(caller, "wrongpass1", code)
    assert err.value.reason == "INVALID_CREDENTIALS"
    await w.totp.disable(caller, PASSWORD, code)
    row = w.users.rows[caller.user_id or 0]
    assert row["totp_enabled"] is False and row["totp_secret_encrypted"] is None


async def _reasons(attempt: Callable[[], Awaitable[object]], times: int) -> list[str]:
    reasons = []
    for _ in range(times):
        with pytest.raises(DomainError) as err:
            await attempt()
        reasons.append(err.value.reason)
    return reasons


async def test_disable_attempts_are_throttled_like_logins() -> None:
    w, caller, secret = await enrolled_world()
    await w.totp.confirm_enrollment(caller, generate_code(secret, w.clock.now))
    reasons = await _reasons(lambda: w.totp.disable(caller, "wrongpass1", "123456"), 7)
    assert reasons == ["INVALID_CREDENTIALS"] * 5 + ["RATE_LIMITED"] * 2


async def test_begin_enrollment_needs_the_current_password() -> None:
    w = build_world()
    caller = Caller(user_id=await w.auth.register(Registration("alice", PASSWORD, "alice@example.com")))
    reasons = await _reasons(lambda: w.totp.begin_enrollment(caller, "wrongpass1"), 6)
    assert reasons == ["INVALID_CREDENTIALS"] * 5 + ["RATE_LIMITED"]
    assert w.users.rows[caller.user_id or 0]["totp_secret_encrypted"] is None
    w.clock.now += 2
    assert (await w.totp.begin_enrollment(caller, PASSWORD)).secret


async def test_wrong_confirm_codes_are_throttled_like_logins() -> None:
    w, caller, secret = await enrolled_world()
    good = generate_code(secret, w.clock.now)
    bad = "000000" if good != "000000" else "111111"
    reasons = await _reasons(lambda: w.totp.confirm_enrollment(caller, bad), 7)
    assert reasons == ["TOTP_INVALID"] * 5 + ["RATE_LIMITED"] * 2
    w.clock.now += 1
    await w.totp.confirm_enrollment(caller, generate_code(secret, w.clock.now))


async def test_enabling_and_disabling_totp_end_the_other_sessions() -> None:
    """ASVS 7.4.3: after a factor changes, other sessions must sign in again; the current one stays."""
    w = build_world()
    await w.auth.register(Registration("alice", PASSWORD, "alice@example.com"))
    here = await w.auth.login(LoginAttempt("alice", PASSWORD))
    elsewhere = await w.auth.login(LoginAttempt("alice", PASSWORD))
    caller = await w.tokens.authenticate(here.access_token)
    other = await w.auth.login(LoginAttempt("alice", PASSWORD))
    secret = decode((await w.totp.begin_enrollment(caller, PASSWORD)).secret)
    w.clock.now -= 30
    await w.totp.confirm_enrollment(caller, generate_code(secret, w.clock.now))
    w.clock.now += 30
    for pair in (elsewhere, other):
        with pytest.raises(Unauthenticated) as err:
            await w.tokens.authenticate(pair.access_token)
        assert err.value.reason == "TOKEN_REVOKED"
        with pytest.raises(Unauthenticated):
            await w.tokens.refresh(pair.refresh_token)
    assert (await w.tokens.authenticate(here.access_token)).user_id == caller.user_id
    newer = await w.auth.login(LoginAttempt("alice", PASSWORD, totp_code=generate_code(secret, w.clock.now)))
    w.clock.now += 30
    await w.totp.disable(caller, PASSWORD, generate_code(secret, w.clock.now))
    with pytest.raises(Unauthenticated):
        await w.tokens.authenticate(newer.access_token)
    assert (await w.tokens.authenticate(here.access_token)).user_id == caller.user_id
    assert [e["details"].get("sessions_ended") for e in w.audit.events if e["event"] == "auth.totp_enable"][-1] == 2


async def test_profile_masks_pii() -> None:
    w = build_world()
    user_id = await w.auth.register(Registration("alice", PASSWORD, "alice@example.com", "+8613812345678", "Alice"))
    profile = await w.profiles.get_profile(Caller(user_id=user_id))
    assert (profile.username, profile.email_masked, profile.name_masked) == ("alice", "a***@example.com", "A***")
    assert profile.phone_masked.endswith("5678") and "13812345678" not in profile.phone_masked
