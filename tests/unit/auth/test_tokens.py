"""Access-token claims and algorithm allow-list; refresh rotation and reuse; logout; introspection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import PermissionDenied, Unauthenticated
from internal.biz.ports import Caller
from internal.biz.token import Introspection, TokenPair
from internal.conf.config import ConfigError
from internal.data.signing_keys import JwtSigner, ed25519_thumbprint
from tests.unit.auth.fakes import ED25519_KEY, World, build_world

PASSWORD = "s3cretpass"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def login(w: World) -> TokenPair:
    if not w.users.rows:
        await w.auth.register(Registration("alice", PASSWORD, "alice@example.com"))
    return await w.auth.login(LoginAttempt("alice", PASSWORD))


async def reason_of(w: World, token: str) -> str:
    with pytest.raises(Unauthenticated) as err:
        await w.tokens.authenticate(token)
    return err.value.reason


async def test_access_token_claims_and_header() -> None:
    w = build_world()
    pair = await login(w)
    header = jwt.get_unverified_header(pair.access_token)
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})
    assert header["alg"] == "EdDSA" and header["kid"] == w.signer.kid and header["typ"] == "at+jwt"
    assert claims["iss"] == "authkms-test" and claims["aud"] == "clients-test"
    assert claims["sub"] == "1" and claims["username"] == "alice"
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"]
    assert len(claims["jti"]) >= 20 and claims["sid"] in w.sessions.families
    assert abs(claims["iat"] - time.time()) < 5
    assert "email" not in claims and "alice@example.com" not in json.dumps(claims)
    other = await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert jwt.decode(other.access_token, options={"verify_signature": False})["jti"] != claims["jti"]


async def test_kid_is_the_rfc7638_thumbprint_and_jwks_has_only_public_material() -> None:
    w = build_world()
    raw = ED25519_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = b64(raw)
    expected = b64(hashlib.sha256(f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()).digest())
    assert ed25519_thumbprint(x) == expected == w.signer.kid
    assert w.tokens.jwks() == [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": expected, "alg": "EdDSA", "use": "sig"}]
    # A third party verifies with the published key only.
    pair = await login(w)
    public = jwt.PyJWK(w.tokens.jwks()[0])
    assert jwt.decode(pair.access_token, public, algorithms=["EdDSA"], audience="clients-test")["sub"] == "1"


def _unsigned(claims: dict[str, object], header: dict[str, object]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


async def test_alg_none_is_rejected() -> None:
    w = build_world()
    pair = await login(w)
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})
    for alg in ("none", "None", "NONE"):
        assert await reason_of(w, _unsigned(claims, {"alg": alg, "typ": "JWT", "kid": w.signer.kid})) == "TOKEN_INVALID"


async def test_hs256_signed_with_the_ed25519_public_key_is_rejected() -> None:
    w = build_world()
    pair = await login(w)
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})
    public_pem = ED25519_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw_public = ED25519_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for secret in (public_pem, raw_public, w.tokens.jwks()[0]["x"].encode()):
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": w.signer.kid}).encode())
        body = b64(json.dumps(claims).encode())
        sig = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
        assert await reason_of(w, f"{header}.{body}.{sig}") == "TOKEN_INVALID"


async def test_tampered_foreign_and_malformed_tokens_are_invalid() -> None:
    w = build_world()
    pair = await login(w)
    head, body, sig = pair.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "2"
    forged = f"{head}.{b64(json.dumps(claims).encode())}.{sig}"
    stranger = JwtSigner("EdDSA", Ed25519PrivateKey.generate(), "authkms-test", "clients-test")
    foreign = stranger.sign({"sub": "1", "sid": "x", "jti": "j", "iat": 1, "nbf": 1, "exp": int(time.time()) + 60})
    for token in (forged, foreign, "", "abc", "a.b.c", "x" * 5000, pair.access_token + "x"):
        assert await reason_of(w, token) == "TOKEN_INVALID"


async def test_wrong_audience_or_issuer_is_invalid() -> None:
    w = build_world()
    now = int(time.time())
    claims = {"sub": "1", "sid": "s", "jti": "j", "iat": now, "nbf": now, "exp": now + 60}
    for iss, aud in (("authkms-test", "someone-else"), ("evil", "clients-test")):
        token = JwtSigner("EdDSA", ED25519_KEY, iss, aud).sign(claims)
        assert await reason_of(w, token) == "TOKEN_INVALID"


async def test_expired_token() -> None:
    w = build_world()
    await login(w)
    w.clock.now -= 3600
    pair = await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert await reason_of(w, pair.access_token) == "TOKEN_EXPIRED"


async def test_hs256_mode_round_trip_and_rejects_eddsa_tokens() -> None:
    hs = JwtSigner("HS256", b"k" * 32, "authkms-test", "clients-test")
    w = build_world(signer=hs)
    pair = await login(w)
    assert jwt.get_unverified_header(pair.access_token)["alg"] == "HS256"
    assert (await w.tokens.authenticate(pair.access_token)).user_id == 1
    assert w.tokens.jwks() == []
    ed = build_world()
    ed_pair = await login(ed)
    assert await reason_of(w, ed_pair.access_token) == "TOKEN_INVALID"
    with pytest.raises(ConfigError):
        JwtSigner("HS256", b"short", "i", "a")


async def test_refresh_rotates_and_reuse_revokes_the_family() -> None:
    w = build_world()
    first = await login(w)
    second = await w.tokens.refresh(first.refresh_token, "1.1.1.1")
    assert second.refresh_token != first.refresh_token
    assert (await w.tokens.authenticate(second.access_token)).user_id == 1
    third = await w.tokens.refresh(second.refresh_token)

    with pytest.raises(Unauthenticated) as err:
        await w.tokens.refresh(first.refresh_token)  # replay of a used token
    assert err.value.reason == "REFRESH_TOKEN_REUSED"
    # The whole family is gone: the newest refresh token and every access token of the session.
    with pytest.raises(Unauthenticated) as err:
        await w.tokens.refresh(third.refresh_token)
    assert err.value.reason == "TOKEN_REVOKED"
    for access in (first.access_token, second.access_token, third.access_token):
        assert await reason_of(w, access) == "TOKEN_REVOKED"
    reuse = [e for e in w.audit.events if e["event"] == "auth.refresh_token_reuse"]
    assert len(reuse) == 1 and reuse[0]["subject"] == "1"


async def test_other_sessions_survive_a_reuse() -> None:
    w = build_world()
    a = await login(w)
    b = await w.auth.login(LoginAttempt("alice", PASSWORD))
    await w.tokens.refresh(a.refresh_token)
    with pytest.raises(Unauthenticated):
        await w.tokens.refresh(a.refresh_token)
    assert (await w.tokens.authenticate(b.access_token)).user_id == 1
    await w.tokens.refresh(b.refresh_token)


async def test_refresh_unknown_malformed_and_expired() -> None:
    w = build_world()
    first = await login(w)
    for token, reason in (("A" * 43, "TOKEN_INVALID"), ("short", "TOKEN_INVALID"), ("", "TOKEN_INVALID")):
        with pytest.raises(Unauthenticated) as err:
            await w.tokens.refresh(token)
        assert err.value.reason == reason
    w.clock.now += 8 * 86400
    with pytest.raises(Unauthenticated) as err:
        await w.tokens.refresh(first.refresh_token)
    assert err.value.reason == "TOKEN_EXPIRED"


async def test_family_absolute_lifetime_is_never_extended() -> None:
    w = build_world()
    pair = await login(w)
    for _ in range(4):  # refresh every 6 days: each token is fresh, the family is not
        w.clock.now += 6 * 86400
        pair = await w.tokens.refresh(pair.refresh_token)
    w.clock.now += 6.5 * 86400  # day 30.5: the token is 6.5 days old (< 7) but its family is over
    with pytest.raises(Unauthenticated) as err:
        await w.tokens.refresh(pair.refresh_token)
    assert err.value.reason == "TOKEN_EXPIRED"


async def test_logout_revokes_access_token_and_session() -> None:
    w = build_world()
    pair = await login(w)
    caller = await w.tokens.authenticate(pair.access_token)
    await w.tokens.logout(caller, "1.2.3.4")
    assert await reason_of(w, pair.access_token) == "TOKEN_REVOKED"
    with pytest.raises(Unauthenticated) as err:
        await w.tokens.refresh(pair.refresh_token)
    assert err.value.reason == "TOKEN_REVOKED"
    assert w.audit.events[-1]["event"] == "auth.logout"


INTROSPECTOR = Caller(scopes=frozenset({"auth.introspect"}))


async def test_introspection_needs_the_introspect_scope() -> None:
    w = build_world()
    pair = await login(w)
    user = await w.tokens.authenticate(pair.access_token)
    for caller in (user, Caller(scopes=frozenset({"auth.admin", "kms.admin"}))):
        with pytest.raises(PermissionDenied) as err:
            await w.tokens.introspect(caller, pair.access_token)
        assert err.value.reason == "PERMISSION_DENIED"


async def test_introspection_reports_active_access_tokens_and_nothing_else() -> None:
    w = build_world()
    pair = await login(w)
    info = await w.tokens.introspect(INTROSPECTOR, pair.access_token)
    assert info.active and not info.revoked and info.token_type == "access"
    assert (info.subject, info.username, info.kid, info.issuer) == ("1", "alice", w.signer.kid, "authkms-test")
    # RFC 7662 §2.2: an inactive token says nothing but active=false.
    nothing = Introspection(active=False)
    # A refresh token is never introspected: whoever stole one learns nothing without using it.
    assert await w.tokens.introspect(INTROSPECTOR, pair.refresh_token) == nothing
    await w.tokens.refresh(pair.refresh_token)
    assert await reason_of_refresh(w, pair.refresh_token) == "REFRESH_TOKEN_REUSED"
    assert await w.tokens.introspect(INTROSPECTOR, pair.access_token) == nothing  # reuse revoked the session
    second = await login(w)
    await w.tokens.logout(await w.tokens.authenticate(second.access_token))
    assert await w.tokens.introspect(INTROSPECTOR, second.access_token) == nothing
    for junk in ("", "garbage", "a.b.c", "x" * 10_000):
        assert await w.tokens.introspect(INTROSPECTOR, junk) == nothing
    w.clock.now -= 3600
    old = await w.auth.login(LoginAttempt("alice", PASSWORD))
    assert await w.tokens.introspect(INTROSPECTOR, old.access_token) == nothing


async def reason_of_refresh(w: World, token: str) -> str:
    with pytest.raises(Unauthenticated) as err:
        await w.tokens.refresh(token)
    return err.value.reason


def _signed(claims: dict[str, object], header: dict[str, object]) -> str:
    return jwt.encode({**claims, "iss": "authkms-test", "aud": "clients-test"}, ED25519_KEY, "EdDSA", headers=header)


async def test_access_tokens_must_be_typed_at_jwt() -> None:
    """RFC 9068: a JWT signed with our key but without typ at+jwt (e.g. another kind of token) is refused."""
    w = build_world()
    pair = await login(w)
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})
    for typ in (None, "JWT", "at+JWT2", "id_token"):
        header: dict[str, object] = {"kid": w.signer.kid}
        if typ is not None:
            header["typ"] = typ
        assert await reason_of(w, _signed(claims, header)) == "TOKEN_INVALID"
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt"):
        assert (await w.tokens.authenticate(_signed(claims, {"kid": w.signer.kid, "typ": typ}))).user_id == 1


async def test_lifetime_is_capped_at_the_configured_one() -> None:
    """exp - iat above the configured lifetime never verifies, even signed with our own key."""
    w = build_world()
    pair = await login(w)
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})
    header = {"kid": w.signer.kid, "typ": "at+jwt"}
    long_lived = {**claims, "exp": claims["iat"] + 900 + 1}
    assert await reason_of(w, _signed(long_lived, header)) == "TOKEN_INVALID"
    exact = {**claims, "exp": claims["iat"] + 900}
    assert (await w.tokens.authenticate(_signed(exact, header))).user_id == 1
