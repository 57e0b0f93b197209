"""auth.v1.Auth through a real in-process grpc.aio server (ErrorInterceptor included): status code AND
ErrorInfo.reason for each RPC's main paths, over real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health
from grpc_status import rpc_status

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from internal.biz.credentials import TOKEN_PREFIX, CredentialUsecase, token_hash
from internal.biz.errors import InvalidArgument
from internal.biz.totp import generate_code
from internal.conf.config import GRPC
from internal.data.credentials import PgCredentialRepo
from internal.data.signing_keys import JwtSigner
from internal.server.grpc import ServiceRegistration, new_grpc_server
from internal.service.auth import AuthService
from tests.integration.auth.conftest import Stack, build_stack, unique
from tests.unit.auth.fakes import ED25519_KEY

PASSWORD = "s3cretpass"
PNG = b"\x89PNG\r\n\x1a\nfake"


@dataclass(frozen=True)
class Challenge:
    captcha_id: str
    image_png: bytes | None


class FakeCaptcha:
    """Stands in for CaptchaUsecase: code "424242" is right."""

    def __init__(self) -> None:
        self.enabled = False

    async def issue(self, captcha_type: str, target: str, client_addr: str) -> Challenge:
        if captcha_type != "image":
            raise InvalidArgument("VALIDATION_ERROR", "captcha_type must be one of: image, sms, email")
        return Challenge("c" * 32, PNG)

    async def verify(self, captcha_id: str, code: str) -> bool:
        return code == "424242"

    async def consume(
        self, captcha_id: str, code: str, allowed_targets: Collection[str] = (), *, require_target: bool = False
    ) -> None:
        """"424242" answers an image captcha; "424242@<target>" is a code that was sent to <target>."""
        if not captcha_id or not code:
            raise InvalidArgument("CAPTCHA_REQUIRED", "captcha_id and captcha_code are required")
        answer, _, target = code.partition("@")
        if answer != "424242" or (target and target not in allowed_targets) or (require_target and not target):
            raise InvalidArgument("CAPTCHA_INVALID", "the captcha code is not valid")


@dataclass
class Client:
    stub: auth_pb2_grpc.AuthStub
    stack: Stack
    captcha: FakeCaptcha
    pool: asyncpg.Pool

    async def service_credential(self, *scopes: str) -> tuple[tuple[str, str]]:
        """A service credential with ``scopes``, stored as the credentials CLI stores one."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        await PgCredentialRepo(self.pool).create(unique("svc"), token_hash(token), list(scopes), ["default"])
        return bearer(token)

    async def register(self, username: str | None = None) -> tuple[str, str]:
        username = username or unique()
        email = f"{unique()}@example.com"
        await self.stub.Register(auth_pb2.RegisterRequest(username=username, password=PASSWORD, email=email))
        return username, email

    async def login(self, username: str) -> auth_pb2.LoginReply:
        return await self.stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))


@pytest.fixture
async def client(pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str) -> AsyncIterator[Client]:
    captcha = FakeCaptcha()
    stack = build_stack(
        pg_pool,
        redis_client,
        redis_prefix,
        free_attempts=3,
        delay_seconds=0.5,
        hard_lock_attempts=3,
        captcha=captcha,
        client_rate_limit=40,
    )
    credentials = CredentialUsecase(PgCredentialRepo(pg_pool), stack.audit)
    service = AuthService(stack.auth, stack.tokens, stack.totp, stack.profiles, cast(Any, captcha), credentials)
    server, port = new_grpc_server(
        GRPC(addr="127.0.0.1:0"),
        [ServiceRegistration("auth.v1.Auth", lambda s: auth_pb2_grpc.add_AuthServicer_to_server(service, s))],
        health.aio.HealthServicer(),
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Client(auth_pb2_grpc.AuthStub(channel), stack, captcha, pg_pool)
    await server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def error_of(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    status = rpc_status.from_call(cast(Any, err.value))
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return err.value.code(), info.reason, dict(info.metadata)


async def test_captcha_rpcs(client: Client) -> None:
    reply = await client.stub.GetCaptcha(auth_pb2.GetCaptchaRequest(captcha_type="image"))
    prefix = "data:image/png;base64,"
    assert reply.image_data.startswith(prefix) and reply.captcha_id
    assert base64.b64decode(reply.image_data.removeprefix(prefix), validate=True) == PNG
    code, reason, _ = await error_of(client.stub.GetCaptcha(auth_pb2.GetCaptchaRequest(captcha_type="fax")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR")
    ok = await client.stub.VerifyCaptcha(auth_pb2.VerifyCaptchaRequest(captcha_id="x", captcha_code="424242"))
    assert ok.success
    assert not (await client.stub.VerifyCaptcha(auth_pb2.VerifyCaptchaRequest(captcha_id="x"))).success


async def test_register_errors(client: Client) -> None:
    username, email = await client.register()
    cases = [
        (
            auth_pb2.RegisterRequest(username="x", password=PASSWORD, email=email),
            "INVALID_ARGUMENT",
            "VALIDATION_ERROR",
            {"field": "username"},
        ),
        (
            auth_pb2.RegisterRequest(username=unique(), password=PASSWORD, email="nope"),
            "INVALID_ARGUMENT",
            "VALIDATION_ERROR",
            {"field": "email"},
        ),
        (
            auth_pb2.RegisterRequest(username=unique(), password=PASSWORD, email=f"{unique()}@x.io", phone="123"),
            "INVALID_ARGUMENT",
            "VALIDATION_ERROR",
            {"field": "phone"},
        ),
        (
            auth_pb2.RegisterRequest(username=unique(), password="password", email=f"{unique()}@x.io"),
            "INVALID_ARGUMENT",
            "PASSWORD_WEAK",
            {"field": "password"},
        ),
        (
            auth_pb2.RegisterRequest(username=username.upper(), password=PASSWORD, email=f"{unique()}@x.io"),
            "ALREADY_EXISTS",
            "USER_EXISTS",
            {},
        ),
        (
            auth_pb2.RegisterRequest(username=unique(), password=PASSWORD, email=email.upper()),
            "ALREADY_EXISTS",
            "USER_EXISTS",
            {},
        ),
    ]
    for request, code, reason, metadata in cases:
        assert await error_of(client.stub.Register(request)) == (grpc.StatusCode[code], reason, metadata)
    client.captcha.enabled = True
    request = auth_pb2.RegisterRequest(username=unique(), password=PASSWORD, email=f"{unique()}@x.io")
    assert (await error_of(client.stub.Register(request)))[1] == "CAPTCHA_REQUIRED"
    request.captcha_id = "c" * 32
    for wrong in ("000000", "424242", "424242@someone-else@x.io"):  # wrong, an image captcha, another address
        request.captcha_code = wrong
        assert (await error_of(client.stub.Register(request)))[1] == "CAPTCHA_INVALID"
    request.captcha_code = f"424242@{request.email}"
    request.phone = "+8613812345678"
    assert (await error_of(client.stub.Register(request)))[1] == "CAPTCHA_REQUIRED"  # the phone needs its own
    request.phone_captcha_id, request.phone_captcha_code = "p" * 32, "424242@+8613812345678"
    assert (await client.stub.Register(request)).message


async def test_login_errors_and_lockout(client: Client) -> None:
    username, email = await client.register()
    reply = await client.login(email)
    assert reply.access_token and reply.refresh_token and reply.expires_in == 900
    unknown = await error_of(client.stub.Login(auth_pb2.LoginRequest(username=unique(), password="wrongpass1")))
    wrong = await error_of(client.stub.Login(auth_pb2.LoginRequest(username=username, password="wrongpass1")))
    assert unknown == wrong == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS", {})
    await error_of(client.stub.Login(auth_pb2.LoginRequest(username=username, password="wrongpass1")))
    third = await error_of(client.stub.Login(auth_pb2.LoginRequest(username=username, password="wrongpass1")))
    assert third == wrong  # the third failure hard-locks (hard_lock_attempts=3), but a wrong password never learns
    throttled = await error_of(client.login(username))
    assert throttled[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") and "retry_after" in throttled[2]
    await asyncio.sleep(0.6)
    code, reason, metadata = await error_of(client.login(username))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ACCOUNT_LOCKED")
    assert int(metadata["unlock_time"]) > time.time() + 500
    code, reason, _ = await error_of(client.stub.Login(auth_pb2.LoginRequest(username="", password="x")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR")


async def test_login_rate_limit(client: Client) -> None:
    for _ in range(40):
        await error_of(client.stub.Login(auth_pb2.LoginRequest(username=unique(), password="wrongpass1")))
    code, reason, metadata = await error_of(client.stub.Login(auth_pb2.LoginRequest(username="a", password="b")))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") and "retry_after" in metadata


async def test_token_errors_on_protected_rpcs(client: Client) -> None:
    username, _ = await client.register()
    expired = JwtSigner("EdDSA", ED25519_KEY, "authkms-it", "clients-it").sign(
        {"sub": "1", "sid": "00000000-0000-0000-0000-000000000000", "jti": "j", "iat": 1, "nbf": 1, "exp": 2}
    )
    cases = [((), "TOKEN_MISSING"), (bearer("garbage"), "TOKEN_INVALID"), (bearer(expired), "TOKEN_EXPIRED")]
    for metadata, reason in cases:
        for call in (
            client.stub.Logout(auth_pb2.LogoutRequest(), metadata=metadata),
            client.stub.LockStatus(auth_pb2.LockStatusRequest(username=username), metadata=metadata),
            client.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=metadata),
            client.stub.BeginTotpEnrollment(auth_pb2.BeginTotpEnrollmentRequest(), metadata=metadata),
            client.stub.ConfirmTotpEnrollment(auth_pb2.ConfirmTotpEnrollmentRequest(code="1"), metadata=metadata),
            client.stub.DisableTotp(auth_pb2.DisableTotpRequest(), metadata=metadata),
        ):
            assert await error_of(call) == (grpc.StatusCode.UNAUTHENTICATED, reason, {})


async def test_logout_refresh_and_reuse(client: Client) -> None:
    username, _ = await client.register()
    first = await client.login(username)
    second = await client.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert second.refresh_token != first.refresh_token and second.expires_in == 900
    reuse = await error_of(client.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token)))
    assert reuse == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED", {})
    for token, reason in (("", "TOKEN_MISSING"), ("A" * 43, "TOKEN_INVALID")):
        result = await error_of(client.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token)))
        assert result == (grpc.StatusCode.UNAUTHENTICATED, reason, {})
    third = await client.login(username)
    assert (await client.stub.Logout(auth_pb2.LogoutRequest(), metadata=bearer(third.access_token))).success
    again = await error_of(client.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=bearer(third.access_token)))
    assert again == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED", {})


async def test_lock_status_and_profile(client: Client) -> None:
    alice, alice_email = await client.register()
    bob, _ = await client.register()
    token = (await client.login(alice)).access_token
    status = await client.stub.LockStatus(auth_pb2.LockStatusRequest(username=alice), metadata=bearer(token))
    assert (status.locked, status.unlock_time, status.failed_attempts, status.max_attempts) == (False, 0, 0, 3)
    for other in (bob, unique()):
        denied = await error_of(
            client.stub.LockStatus(auth_pb2.LockStatusRequest(username=other), metadata=bearer(token))
        )
        assert denied == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", {})
    profile = await client.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=bearer(token))
    assert profile.username == alice and profile.email_masked == f"{alice_email[0]}***@example.com"
    assert profile.phone_masked == "" and profile.created_at > 0 and not profile.totp_enabled


async def test_totp_rpcs(client: Client) -> None:
    username, _ = await client.register()
    auth = bearer((await client.login(username)).access_token)
    not_enrolled = await error_of(
        client.stub.ConfirmTotpEnrollment(auth_pb2.ConfirmTotpEnrollmentRequest(code="123456"), metadata=auth)
    )
    assert not_enrolled == (grpc.StatusCode.FAILED_PRECONDITION, "TOTP_NOT_ENROLLED", {})
    elsewhere = await client.login(username)
    no_password = await error_of(client.stub.BeginTotpEnrollment(auth_pb2.BeginTotpEnrollmentRequest(), metadata=auth))
    assert no_password == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS", {})
    begin = auth_pb2.BeginTotpEnrollmentRequest(password=PASSWORD)
    enrollment = await client.stub.BeginTotpEnrollment(begin, metadata=auth)
    assert enrollment.otpauth_uri.startswith("otpauth://totp/") and username in enrollment.otpauth_uri
    secret = base64.b32decode(enrollment.secret + "=" * (-len(enrollment.secret) % 8))
    code = generate_code(secret, time.time() - 30)
    wrong = "000000" if code != "000000" and generate_code(secret, time.time()) != "000000" else "999999"
    invalid = await error_of(
        client.stub.ConfirmTotpEnrollment(auth_pb2.ConfirmTotpEnrollmentRequest(code=wrong), metadata=auth)
    )
    assert invalid[:2] == (grpc.StatusCode.UNAUTHENTICATED, "TOTP_INVALID")
    await client.stub.ConfirmTotpEnrollment(auth_pb2.ConfirmTotpEnrollmentRequest(code=code), metadata=auth)
    already = await error_of(client.stub.BeginTotpEnrollment(begin, metadata=auth))
    assert already[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "TOTP_ALREADY_ENABLED")
    # Enabling TOTP ended the other session (ASVS 7.4.3); this one goes on.
    profile_elsewhere = client.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=bearer(elsewhere.access_token))
    ended = await error_of(profile_elsewhere)
    assert ended == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED", {})
    assert (await client.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=auth)).totp_enabled
    required = await error_of(client.login(username))
    assert required[:2] == (grpc.StatusCode.UNAUTHENTICATED, "TOTP_REQUIRED")
    now_code = generate_code(secret, time.time())
    await client.stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD, totp_code=now_code))
    replay = await error_of(
        client.stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD, totp_code=now_code))
    )
    assert replay[:2] == (grpc.StatusCode.UNAUTHENTICATED, "TOTP_INVALID")


async def test_jwks_and_introspection(client: Client) -> None:
    jwks = await client.stub.GetJwks(auth_pb2.GetJwksRequest())
    assert json.loads(jwks.jwks_json) == {"keys": client.stack.tokens.jwks()}
    assert jwks.keys[0].kty == "OKP" and jwks.keys[0].alg == "EdDSA" and jwks.keys[0].use == "sig"
    username, _ = await client.register()
    pair = await client.login(username)
    request = auth_pb2.IntrospectTokenRequest(token=pair.access_token)
    # RFC 7662 §2.1: only authenticated callers, and only with the auth.introspect scope.
    assert (await error_of(client.stub.IntrospectToken(request)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )
    as_user = await error_of(client.stub.IntrospectToken(request, metadata=bearer(pair.access_token)))
    assert as_user == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", {})
    unknown = await error_of(client.stub.IntrospectToken(request, metadata=bearer(TOKEN_PREFIX + "x" * 43)))
    assert unknown == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID", {})
    admin_only = await client.service_credential("auth.admin", "kms.admin")
    assert (await error_of(client.stub.IntrospectToken(request, metadata=admin_only)))[1] == "PERMISSION_DENIED"
    service = await client.service_credential("auth.introspect")
    info = await client.stub.IntrospectToken(request, metadata=service)
    assert info.active and info.username == username and info.kid == jwks.keys[0].kid and info.token_type == "access"
    # RFC 7662 §2.2: whatever is not active says only active=false, refresh tokens included.
    nothing = auth_pb2.IntrospectTokenReply()
    refresh = await client.stub.IntrospectToken(
        auth_pb2.IntrospectTokenRequest(token=pair.refresh_token), metadata=service
    )
    assert refresh == nothing
    junk = await client.stub.IntrospectToken(auth_pb2.IntrospectTokenRequest(token="not-a-token"), metadata=service)
    assert junk == nothing
    await client.stub.Logout(auth_pb2.LogoutRequest(), metadata=bearer(pair.access_token))
    assert await client.stub.IntrospectToken(request, metadata=service) == nothing


async def test_no_secret_reaches_the_logs(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    username, email = await client.register()
    await error_of(client.stub.Login(auth_pb2.LoginRequest(username=email, password="wrongpass1")))
    pair = await client.login(username)
    refreshed = await client.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=pair.refresh_token))
    await error_of(client.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=pair.refresh_token)))
    fresh = await client.login(username)
    await client.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=bearer(fresh.access_token))
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "auth.v1.Auth/Login" in logged  # the access log did run
    for secret in (
        PASSWORD,
        "wrongpass1",
        email,
        email.split("@")[0],
        pair.refresh_token,
        refreshed.refresh_token,
        pair.access_token,
        refreshed.access_token.split(".")[2],
    ):
        assert secret not in logged
