"""auth.v1 through real server processes (`python cmd/server/main.py`), called with the generated stubs.

* the full flow with captcha enabled (codes read from the development outbox in Redis), login by
  username / email / phone, profile, refresh-token rotation and reuse detection, logout, JWKS and
  introspection, TOTP enrollment and enforcement, lockout, LockStatus for self / others / an admin
  credential, and the main error paths of every RPC (gRPC code and ``ErrorInfo.reason``);
* logout on one replica is honoured by another, also after the Redis database is flushed;
* no secret the scenario used appears in the server logs (DEBUG) or anywhere in the database;
* a third-party client (Node.js, @grpc/grpc-js + @grpc/proto-loader on the .proto files).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import random
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import google.api.annotations_pb2
import grpc
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.e2e.harness import (
    NODE_CLIENT,
    ROOT,
    ServerProcess,
    auth,
    cli,
    introspection_credential,
    node_with_client_modules,
    running,
    totp_code,
    unique_account,
)

pytestmark = pytest.mark.e2e

CALL_TIMEOUT = 20
CODE = grpc.StatusCode

# Raised per-client limits: every call of the scenario comes from 127.0.0.1, and the defaults
# (30 logins a minute, 20 code sends an hour) are sized for one human, not a test run.
LIMITS = {
    "APP__AUTH__LOGIN_RATE_LIMIT": "1000",
    "APP__AUTH__CAPTCHA__SEND_LIMIT_PER_CLIENT": "200",
}
NO_CAPTCHA = {"APP__AUTH__CAPTCHA_ENABLED": "false"}


# ---------------------------------------------------------------------------------------------------
# helpers


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(cast(grpc.Call, err))
    assert status is not None, "error without google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info), status
    return info


def expect_error(call: Callable[[], object], code: grpc.StatusCode, reason: str) -> error_details_pb2.ErrorInfo:
    """Run ``call``; it must fail with ``code`` and an ErrorInfo carrying ``reason``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = cast(grpc.Call, caught.value)
    info = error_info(caught.value)
    assert (err.code(), info.reason) == (code, reason), err.details()
    return info


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_header(token: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(b64url(token.split(".")[0])))


class Client:
    """Sync stub on one server plus the bits of Redis the test may read (the dev outbox)."""

    def __init__(self, server: ServerProcess, redis_client: redis.Redis, prefix: str) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.stub = auth_pb2_grpc.AuthStub(self.channel)
        self._redis = redis_client
        self._prefix = prefix

    def close(self) -> None:
        self.channel.close()

    def code_captcha(self, kind: str, target: str) -> tuple[str, str]:
        """GetCaptcha(sms|email, target) and the code the development outbox received for it."""
        reply = self.stub.GetCaptcha(auth_pb2.GetCaptchaRequest(captcha_type=kind, target=target), timeout=CALL_TIMEOUT)
        assert reply.captcha_id and not reply.image_data
        code = self._redis.lindex(f"{self._prefix}dev-outbox:{target}", 0)
        assert code is not None, f"no code in the dev outbox for {kind}"
        return reply.captcha_id, code.decode() if isinstance(code, bytes) else str(code)

    def register(
        self, account: dict[str, str], captcha: tuple[str, str] = ("", ""), phone_captcha: tuple[str, str] = ("", "")
    ) -> auth_pb2.RegisterReply:
        request = auth_pb2.RegisterRequest(
            **account,
            captcha_id=captcha[0],
            captcha_code=captcha[1],
            phone_captcha_id=phone_captcha[0],
            phone_captcha_code=phone_captcha[1],
        )
        return self.stub.Register(request, timeout=CALL_TIMEOUT)

    def login(
        self, identifier: str, password: str, captcha: tuple[str, str] = ("", ""), totp: str = ""
    ) -> auth_pb2.LoginReply:
        request = auth_pb2.LoginRequest(
            username=identifier, password=password, captcha_id=captcha[0], captcha_code=captcha[1], totp_code=totp
        )
        return self.stub.Login(request, timeout=CALL_TIMEOUT)

    def profile(self, token: str) -> auth_pb2.GetProfileReply:
        return self.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=auth(token), timeout=CALL_TIMEOUT)

    def refresh(self, refresh_token: str) -> auth_pb2.RefreshTokenReply:
        return self.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=refresh_token), timeout=CALL_TIMEOUT)

    def logout(self, token: str) -> auth_pb2.LogoutReply:
        return self.stub.Logout(auth_pb2.LogoutRequest(), metadata=auth(token), timeout=CALL_TIMEOUT)

    def lock_status(self, username: str, token: str) -> auth_pb2.LockStatusReply:
        return self.stub.LockStatus(
            auth_pb2.LockStatusRequest(username=username), metadata=auth(token), timeout=CALL_TIMEOUT
        )

    def introspect(self, token: str, credential: str) -> auth_pb2.IntrospectTokenReply:
        request = auth_pb2.IntrospectTokenRequest(token=token)
        return self.stub.IntrospectToken(request, metadata=auth(credential), timeout=CALL_TIMEOUT)


INACTIVE = auth_pb2.IntrospectTokenReply()  # RFC 7662 §2.2: active=false and nothing else


@contextmanager
def clients(servers: list[ServerProcess], redis_url: str, prefix: str) -> Iterator[list[Client]]:
    redis_client = redis.Redis.from_url(redis_url)
    made = [Client(server, redis_client, prefix) for server in servers]
    try:
        yield made
    finally:
        for client in made:
            client.close()
        redis_client.close()


def dump_database(database_url: str) -> tuple[str, bytes, dict[str, int]]:
    """Every row of every table: as text (bytea as hex) and the raw bytea bytes; row counts per table."""

    async def dump() -> tuple[str, bytes, dict[str, int]]:
        conn = await asyncpg.connect(database_url)
        try:
            tables = [
                r["table_name"]
                for r in await conn.fetch(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
                )
            ]
            text, raw, counts = [], [], {}
            for table in tables:
                rows = await conn.fetch(f'SELECT * FROM "{table}"')
                counts[table] = len(rows)
                for row in rows:
                    cells = []
                    for column, value in row.items():
                        if isinstance(value, bytes | bytearray | memoryview):
                            raw.append(bytes(value))
                            value = bytes(value).hex()
                        cells.append(f"{column}={value}")
                    text.append(f"{table}: " + " | ".join(cells))
            return "\n".join(text), b"\x00".join(raw), counts
        finally:
            await conn.close()

    return asyncio.run(dump())


def leaks(haystack: str, raw: bytes, secrets_used: dict[str, str]) -> list[str]:
    """Names of the secrets found in ``haystack`` (case-insensitive) or ``raw``.

    Short numeric codes only count as a whole number (not inside a hex string, a longer number or the
    microseconds of a timestamp), so a random match cannot fail the test.
    """
    found = []
    lowered = haystack.lower()
    for name, value in secrets_used.items():
        if re.fullmatch(r"\d{4,10}", value):
            pattern = rf"(?<![0-9A-Za-z.]){value}(?![0-9A-Za-z])"
            hit = bool(re.search(pattern, haystack) or re.search(pattern.encode(), raw))
        else:
            hit = value.lower() in lowered or value.encode() in raw
        if hit:
            found.append(name)
    return found


def dedicated_redis(redis_url: str) -> tuple[str, Callable[[], None]]:
    """A logical Redis database nobody else uses, and a function that FLUSHDBs it.

    Only for TCP URLs (redis:// or rediss://): a random empty database 5..15 is claimed. With other
    URLs (a unix socket) the shared database is kept and "flush" deletes every key of the server's
    key prefix instead, which is the same for the service under test.
    """
    parts = urlsplit(redis_url)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        candidates = list(range(5, 16))
        random.shuffle(candidates)
        for db in candidates:
            url = urlunsplit(parts._replace(path=f"/{db}"))
            client = redis.Redis.from_url(url)
            try:
                if client.dbsize() == 0 and client.set("authkms-e2e-claim", "1", nx=True, ex=300):
                    return url, functools.partial(_flushdb, url)
            finally:
                client.close()
        pytest.fail("no empty Redis logical database in 5..15 for the flush test")
    return redis_url, lambda: None


def _flushdb(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        assert client.dbsize() == 0
    finally:
        client.close()


def _flush_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------
# 1 + 3: the full flow, every RPC's main error paths, then no secret in logs or database


def test_full_flow_error_paths_and_no_secret_leaks(
    tmp_path: Path, server_env: dict[str, str], database_url: str, redis_url: str, redis_prefix: str
) -> None:
    env = {**server_env, **LIMITS}
    used: dict[str, str] = {}  # every secret the scenario handled, by a name for the failure message
    started = time.monotonic()
    # A: default configuration (captcha enabled). B: same database and Redis prefix, captcha disabled.
    with running(tmp_path, env, {**env, **NO_CAPTCHA}) as servers, clients(servers, redis_url, redis_prefix) as pair:
        a, b = pair
        admin_cli = subprocess.Popen(
            [
                sys.executable,
                "cmd/server/main.py",
                "credentials",
                "create",
                "--name",
                f"admin-{uuid.uuid4().hex[:6]}",
                "--scopes",
                "auth.admin",
            ],
            cwd=ROOT,
            env=servers[0].env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        kms_cli = subprocess.Popen(
            [
                sys.executable,
                "cmd/server/main.py",
                "credentials",
                "create",
                "--name",
                f"kms-{uuid.uuid4().hex[:6]}",
                "--scopes",
                "kms.encrypt",
            ],
            cwd=ROOT,
            env=servers[0].env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        # --- GetCaptcha / VerifyCaptcha --------------------------------------------------------------
        image = a.stub.GetCaptcha(auth_pb2.GetCaptchaRequest(captcha_type="image"), timeout=CALL_TIMEOUT)
        assert image.captcha_id
        assert image.image_data.startswith("data:image/png;base64,")
        png = base64.b64decode(image.image_data.removeprefix("data:image/png;base64,"), validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert not a.stub.VerifyCaptcha(
            auth_pb2.VerifyCaptchaRequest(captcha_id=image.captcha_id, captcha_code="0"), timeout=CALL_TIMEOUT
        ).success
        for request in (
            auth_pb2.GetCaptchaRequest(captcha_type="carrier-pigeon"),
            auth_pb2.GetCaptchaRequest(captcha_type="email", target="not-an-address"),
            auth_pb2.GetCaptchaRequest(captcha_type="sms", target="12345"),
        ):
            expect_error(
                functools.partial(a.stub.GetCaptcha, request, timeout=CALL_TIMEOUT),
                CODE.INVALID_ARGUMENT,
                "VALIDATION_ERROR",
            )

        alice = unique_account("alice")
        used |= {
            "alice password": alice["password"],
            "alice email": alice["email"],
            "alice phone": alice["phone"],
            "alice phone digits": alice["phone"].lstrip("+"),
        }
        captcha = a.code_captcha("email", alice["email"])
        used["register code"] = captcha[1]
        wrong = f"{(int(captcha[1]) + 1) % 10**6:06d}"
        verify = a.stub.VerifyCaptcha
        assert not verify(auth_pb2.VerifyCaptchaRequest(captcha_id=captcha[0], captcha_code=wrong)).success
        unknown_id = "no-such-captcha-id-0123"
        assert not verify(auth_pb2.VerifyCaptchaRequest(captcha_id=unknown_id, captcha_code=wrong)).success
        assert verify(auth_pb2.VerifyCaptchaRequest(captcha_id=captcha[0], captcha_code=captcha[1])).success

        # --- Register: validation, captcha, success, duplicates ---------------------------------------
        invalid = [
            ({"username": "1starts_with_digit"}, "VALIDATION_ERROR"),
            ({"username": "ab"}, "VALIDATION_ERROR"),
            ({"email": "alice-at-example.com"}, "VALIDATION_ERROR"),
            ({"phone": "13812345678"}, "VALIDATION_ERROR"),  # not international format
            ({"password": "short1"}, "PASSWORD_WEAK"),
            ({"password": "password123"}, "PASSWORD_WEAK"),  # on the common-password list
            ({"password": f"my {alice['username']}!"}, "PASSWORD_WEAK"),  # contains the username
            ({"password": "x1" * 200}, "PASSWORD_WEAK"),  # above the documented maximum
        ]
        for change, why in invalid:
            info = expect_error(functools.partial(a.register, {**alice, **change}, captcha), CODE.INVALID_ARGUMENT, why)
            assert info.metadata["field"] == next(iter(change))
        expect_error(lambda: a.register(alice), CODE.INVALID_ARGUMENT, "CAPTCHA_REQUIRED")
        some_phone_proof = ("p" * 32, "123456")  # checked after the email's proof
        expect_error(
            lambda: a.register(alice, ("Zm9yZ2VkLWNhcHRjaGEtaWQtMTIzNDU2", "123456"), some_phone_proof),
            CODE.INVALID_ARGUMENT,
            "CAPTCHA_EXPIRED",
        )
        expect_error(
            lambda: a.register(alice, (captcha[0], wrong), some_phone_proof), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID"
        )
        # A code is bound to the address it was sent to.
        other_email = f"someone.else.{uuid.uuid4().hex[:6]}@example.com"
        elsewhere = a.code_captcha("email", other_email)
        used["elsewhere code"] = elsewhere[1]
        expect_error(lambda: a.register(alice, elsewhere, some_phone_proof), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID")

        # The phone is proven by its own code (and the email code is not spent on the refusal).
        expect_error(lambda: a.register(alice, captcha), CODE.INVALID_ARGUMENT, "CAPTCHA_REQUIRED")
        phone_proof = a.code_captcha("sms", alice["phone"])
        used["register sms code"] = phone_proof[1]
        expect_error(lambda: a.register(alice, captcha, elsewhere), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID")
        email_proof = a.code_captcha("email", alice["email"])  # the first one went with the refused attempt
        used["register code 2"] = email_proof[1]
        assert a.register(alice, email_proof, phone_proof).message
        # Single use: the same captcha again is gone.
        expect_error(
            lambda: a.register({**alice, "username": alice["username"] + "2"}, email_proof, phone_proof),
            CODE.INVALID_ARGUMENT,
            "CAPTCHA_EXPIRED",
        )
        fresh = unique_account("dup")
        for clash in ({"username": alice["username"]}, {"email": alice["email"].upper()}, {"phone": alice["phone"]}):
            expect_error(functools.partial(b.register, {**fresh, **clash}), CODE.ALREADY_EXISTS, "USER_EXISTS")

        # --- Login: by email and phone with bound codes (A), by username (B) --------------------------
        expect_error(lambda: a.login(alice["email"], alice["password"]), CODE.INVALID_ARGUMENT, "CAPTCHA_REQUIRED")
        expect_error(lambda: a.login("", alice["password"]), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")
        email_code = a.code_captcha("email", alice["email"])
        phone_code = a.code_captcha("sms", alice["phone"])
        used |= {"email login code": email_code[1], "sms login code": phone_code[1]}
        # The email code does not open a phone login (bound to its target); it is not consumed by that.
        expect_error(
            lambda: a.login(alice["phone"], alice["password"], email_code), CODE.INVALID_ARGUMENT, "CAPTCHA_INVALID"
        )
        by_email = a.login(alice["email"], alice["password"], email_code)
        by_phone = a.login(alice["phone"], alice["password"], phone_code)
        # Username logins with captcha need an image captcha: an email/sms code is bound to its target.
        username_code = a.code_captcha("email", alice["email"])
        used["username login code"] = username_code[1]
        expect_error(
            lambda: a.login(alice["username"], alice["password"], username_code),
            CODE.INVALID_ARGUMENT,
            "CAPTCHA_INVALID",
        )
        by_username = b.login(alice["username"], alice["password"])
        for pair_ in (by_email, by_phone, by_username):
            assert pair_.access_token.count(".") == 2 and pair_.refresh_token and pair_.expires_in == 900
            used[f"access {len(used)}"] = pair_.access_token
            used[f"refresh {len(used)}"] = pair_.refresh_token
        assert len({by_email.access_token, by_phone.access_token, by_username.access_token}) == 3

        # --- INVALID_CREDENTIALS: unknown user and wrong password are indistinguishable ----------------
        failures = []
        for identifier, password in (
            (f"ghost_{uuid.uuid4().hex[:8]}", alice["password"]),
            (alice["username"], alice["password"] + "x"),
            (f"ghost.{uuid.uuid4().hex[:8]}@example.com", alice["password"]),
            (alice["email"], "Wrong-password-42"),
            ("+8613900000000", "Wrong-password-42"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                b.login(identifier, password)
            err = cast(grpc.Call, caught.value)
            info = error_info(caught.value)
            failures.append((err.code(), err.details(), info.reason, dict(info.metadata), info.domain))
        assert failures[0][0] == CODE.UNAUTHENTICATED and failures[0][2] == "INVALID_CREDENTIALS"
        assert all(f == failures[0] for f in failures), failures
        used["wrong password"] = alice["password"] + "x"
        b.login(alice["username"], alice["password"])  # a success resets alice's failure counter

        # --- GetProfile: masked PII --------------------------------------------------------------------
        profile = a.profile(by_email.access_token)
        assert profile.username == alice["username"] and profile.user_id > 0 and not profile.totp_enabled
        local, domain = alice["email"].split("@")
        assert profile.email_masked == f"{local[0]}***@{domain}"
        assert "*" in profile.phone_masked and profile.phone_masked.endswith(alice["phone"][-4:])
        assert alice["phone"] not in profile.phone_masked and len(profile.phone_masked) == len(alice["phone"])
        assert abs(profile.created_at - time.time()) < 300

        # --- JWKS: the Ed25519 key whose kid is in the token header; the signature verifies ------------
        jwks = a.stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=CALL_TIMEOUT)
        header = jwt_header(by_email.access_token)
        assert header["alg"] == "EdDSA"
        key = next(k for k in jwks.keys if k.kid == header["kid"])
        assert (key.kty, key.crv, key.alg, key.use) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert header["kid"] in {k["kid"] for k in json.loads(jwks.jwks_json)["keys"]}
        assert all("d" not in k for k in json.loads(jwks.jwks_json)["keys"])  # no private material
        signing_input, _, signature = by_email.access_token.rpartition(".")
        Ed25519PublicKey.from_public_bytes(b64url(key.x)).verify(b64url(signature), signing_input.encode())

        # --- IntrospectToken: service credentials with auth.introspect only -----------------------------
        introspector = introspection_credential(database_url)
        used["introspection credential"] = introspector
        expect_error(
            lambda: b.stub.IntrospectToken(auth_pb2.IntrospectTokenRequest(token=by_phone.access_token)),
            CODE.UNAUTHENTICATED,
            "TOKEN_MISSING",
        )
        as_user = functools.partial(b.introspect, by_phone.access_token, by_phone.access_token)
        expect_error(as_user, CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
        seen = b.introspect(by_phone.access_token, introspector)
        assert seen.active and not seen.revoked and seen.token_type == "access"
        assert (seen.subject, seen.username, seen.kid) == (str(profile.user_id), alice["username"], header["kid"])
        assert seen.expires_at - seen.issued_at == 900 and seen.jti and seen.issuer
        assert jwt_header(by_phone.access_token)["typ"] == "at+jwt"
        for junk in ("", "garbage", "a.b.c", by_phone.access_token[:-4] + "AAAA"):
            assert b.introspect(junk, introspector) == INACTIVE
        # Refresh tokens are never introspected (a stolen one learns nothing without being used).
        assert b.introspect(by_phone.refresh_token, introspector) == INACTIVE

        # --- RefreshToken: rotation, reuse detection revokes the whole family --------------------------
        expect_error(lambda: a.refresh(""), CODE.UNAUTHENTICATED, "TOKEN_MISSING")
        expect_error(lambda: a.refresh("not a refresh token"), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
        expect_error(lambda: a.refresh(secrets.token_urlsafe(32)), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
        rotated = a.refresh(by_email.refresh_token)
        used |= {"rotated access": rotated.access_token, "rotated refresh": rotated.refresh_token}
        assert rotated.refresh_token != by_email.refresh_token and rotated.access_token != by_email.access_token
        assert rotated.expires_in == 900
        assert a.profile(rotated.access_token).username == alice["username"]
        expect_error(lambda: b.refresh(by_email.refresh_token), CODE.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
        # The reuse revoked the family: the new refresh token and both access tokens are dead.
        expect_error(lambda: a.refresh(rotated.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        expect_error(lambda: a.profile(rotated.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        expect_error(lambda: b.profile(by_email.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        assert b.introspect(rotated.access_token, introspector) == INACTIVE
        # Other sessions of the same user are untouched.
        assert a.profile(by_phone.access_token).username == alice["username"]

        # --- Logout ------------------------------------------------------------------------------------
        for call in (
            lambda: a.stub.Logout(auth_pb2.LogoutRequest(), timeout=CALL_TIMEOUT),
            lambda: a.stub.GetProfile(auth_pb2.GetProfileRequest(), timeout=CALL_TIMEOUT),
            lambda: a.stub.LockStatus(auth_pb2.LockStatusRequest(username=alice["username"]), timeout=CALL_TIMEOUT),
            lambda: a.stub.BeginTotpEnrollment(auth_pb2.BeginTotpEnrollmentRequest(), timeout=CALL_TIMEOUT),
            lambda: a.stub.Logout(auth_pb2.LogoutRequest(), metadata=(("authorization", "Basic abc"),)),
        ):
            expect_error(call, CODE.UNAUTHENTICATED, "TOKEN_MISSING")
        expect_error(lambda: a.logout("abc.def.ghi"), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
        unsigned = by_phone.access_token.rpartition(".")[0] + "." + base64.urlsafe_b64encode(b"\0" * 64).decode()
        expect_error(lambda: a.profile(unsigned), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
        assert a.logout(by_phone.access_token).success
        expect_error(
            lambda: a.lock_status(alice["username"], by_phone.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED"
        )
        expect_error(lambda: b.logout(by_phone.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        expect_error(lambda: b.refresh(by_phone.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        assert a.introspect(by_phone.access_token, introspector) == INACTIVE

        # --- Lockout: a growing delay per identifier and client network; the hard lock (here from the
        #     operator) is told only to the right password; LockStatus for self / others / admin ----------
        bob = unique_account("bob")
        used |= {"bob password": bob["password"], "bob email": bob["email"], "bob phone": bob["phone"]}
        b.register(bob)
        bob_session = b.login(bob["username"], bob["password"])
        used["bob access"], used["bob refresh"] = bob_session.access_token, bob_session.refresh_token
        own = b.lock_status(bob["username"], bob_session.access_token)
        assert (own.locked, own.unlock_time, own.failed_attempts, own.max_attempts) == (False, 0, 0, 100)
        for _ in range(5):
            expect_error(
                lambda: b.login(bob["username"], "Not-his-password-1"), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS"
            )
        # Past the free attempts this source must wait, even with the right password...
        info = expect_error(lambda: b.login(bob["username"], bob["password"]), CODE.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert int(info.metadata["retry_after"]) >= 1
        # ...but his other identifiers are not slowed down: the throttle does not tell that they are his.
        expect_error(lambda: b.login(bob["email"], "Not-his-password-1"), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
        counted = b.lock_status(bob["username"], bob_session.access_token)
        assert not counted.locked and counted.failed_attempts == 6
        locked_at = time.time()
        locking = cli(servers[0].env, "users", "lock", bob["username"])
        assert locking.returncode == 0 and "locked" in locking.stdout, locking.stderr
        # A wrong password learns nothing of the lock; the right one does, through any identifier and replica.
        expect_error(lambda: b.login(bob["phone"], "Not-his-password-1"), CODE.UNAUTHENTICATED, "INVALID_CREDENTIALS")
        unlock_times = []
        for client, identifier in ((b, bob["phone"]), (a, bob["phone"])):
            captcha_for = a.code_captcha("sms", bob["phone"]) if client is a else ("", "")
            if client is a:
                used[f"bob sms code {len(used)}"] = captcha_for[1]
            info = expect_error(
                functools.partial(client.login, identifier, bob["password"], captcha_for),
                CODE.PERMISSION_DENIED,
                "ACCOUNT_LOCKED",
            )
            unlock_times.append(int(info.metadata["unlock_time"]))
        unlock_time = unlock_times[0]
        assert locked_at + 1790 <= unlock_time <= locked_at + 1810 and abs(unlock_times[1] - unlock_time) <= 1
        status = a.lock_status(bob["username"], bob_session.access_token)
        assert status.locked and abs(status.unlock_time - unlock_time) <= 1 and status.max_attempts == 100

        alice_token = by_username.access_token
        expect_error(lambda: b.lock_status(bob["username"], alice_token), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
        # An unknown user answers the same (no existence oracle).
        expect_error(
            lambda: b.lock_status(f"nobody_{uuid.uuid4().hex[:6]}", alice_token),
            CODE.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
        expect_error(lambda: b.lock_status("bad name!", alice_token), CODE.INVALID_ARGUMENT, "VALIDATION_ERROR")

        out, err = admin_cli.communicate(timeout=60)
        assert admin_cli.returncode == 0, err
        admin_token = out.strip().splitlines()[-1]
        out, err = kms_cli.communicate(timeout=60)
        assert kms_cli.returncode == 0, err
        kms_token = out.strip().splitlines()[-1]
        assert admin_token.startswith("akms_") and kms_token.startswith("akms_")
        used |= {"admin credential": admin_token, "kms credential": kms_token}
        for client in (a, b):
            seen_by_admin = client.lock_status(bob["username"], admin_token)
            assert seen_by_admin.locked and abs(seen_by_admin.unlock_time - unlock_time) <= 1
            assert not client.lock_status(alice["username"], admin_token).locked
        expect_error(
            lambda: a.lock_status(f"nobody_{uuid.uuid4().hex[:6]}", admin_token), CODE.NOT_FOUND, "USER_NOT_FOUND"
        )
        expect_error(lambda: a.lock_status(bob["username"], kms_token), CODE.PERMISSION_DENIED, "PERMISSION_DENIED")
        expect_error(
            lambda: a.lock_status(bob["username"], "akms_" + secrets.token_urlsafe(32)),
            CODE.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )
        # A service credential is no user session: the user-only RPCs refuse it.
        expect_error(lambda: a.logout(admin_token), CODE.UNAUTHENTICATED, "TOKEN_INVALID")
        expect_error(lambda: a.profile(admin_token), CODE.UNAUTHENTICATED, "TOKEN_INVALID")

        # --- TOTP: enrollment, then TOTP_REQUIRED / TOTP_INVALID / success / replay --------------------
        carol = unique_account("carol")
        used |= {"carol password": carol["password"], "carol email": carol["email"], "carol phone": carol["phone"]}
        b.register(carol)
        carol_token = b.login(carol["email"], carol["password"]).access_token
        used["carol access"] = carol_token
        meta = auth(carol_token)
        expect_error(
            lambda: b.stub.DisableTotp(
                auth_pb2.DisableTotpRequest(password=carol["password"], code="123456"),
                metadata=meta,
                timeout=CALL_TIMEOUT,
            ),
            CODE.FAILED_PRECONDITION,
            "TOTP_NOT_ENROLLED",
        )
        expect_error(
            lambda: b.stub.BeginTotpEnrollment(
                auth_pb2.BeginTotpEnrollmentRequest(password="Wrong-password-42"), metadata=meta
            ),
            CODE.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
        begin = auth_pb2.BeginTotpEnrollmentRequest(password=carol["password"])
        enrollment = b.stub.BeginTotpEnrollment(begin, metadata=meta)
        secret = enrollment.secret
        used["totp secret"] = secret
        assert re.fullmatch(r"[A-Z2-7]{32}", secret)
        assert enrollment.otpauth_uri.startswith("otpauth://totp/") and f"secret={secret}" in enrollment.otpauth_uri
        used["totp raw secret hex"] = base64.b32decode(secret).hex()
        assert not b.profile(carol_token).totp_enabled  # pending until confirmed
        other_session = b.login(carol["username"], carol["password"])  # not enforced yet
        used["carol other access"] = other_session.access_token

        step = int(time.time()) // 30
        window = {totp_code(secret, s) for s in range(step - 1, step + 3)}
        bad = next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in window)
        confirm = b.stub.ConfirmTotpEnrollment
        expect_error(
            lambda: confirm(auth_pb2.ConfirmTotpEnrollmentRequest(code="12ab56"), metadata=meta),
            CODE.INVALID_ARGUMENT,
            "VALIDATION_ERROR",
        )
        expect_error(
            lambda: confirm(auth_pb2.ConfirmTotpEnrollmentRequest(code=bad), metadata=meta),
            CODE.UNAUTHENTICATED,
            "TOTP_INVALID",
        )
        current = totp_code(secret, step)
        assert confirm(auth_pb2.ConfirmTotpEnrollmentRequest(code=current), metadata=meta).success
        expect_error(
            lambda: b.stub.BeginTotpEnrollment(begin, metadata=meta),
            CODE.FAILED_PRECONDITION,
            "TOTP_ALREADY_ENABLED",
        )
        assert b.profile(carol_token).totp_enabled
        # Enabling TOTP ended carol's other session (ASVS 7.4.3); the one that enabled it goes on.
        expect_error(lambda: a.profile(other_session.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
        expect_error(lambda: a.refresh(other_session.refresh_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")

        expect_error(lambda: b.login(carol["username"], carol["password"]), CODE.UNAUTHENTICATED, "TOTP_REQUIRED")
        expect_error(
            lambda: b.login(carol["username"], carol["password"], totp=bad), CODE.UNAUTHENTICATED, "TOTP_INVALID"
        )
        # The confirmation used the current step: its code is spent.
        expect_error(
            lambda: b.login(carol["username"], carol["password"], totp=current), CODE.UNAUTHENTICATED, "TOTP_INVALID"
        )
        # A wrong password with a good code is still INVALID_CREDENTIALS (no TOTP oracle).
        expect_error(
            lambda: b.login(carol["username"], "Wrong-password-42", totp=totp_code(secret, step + 1)),
            CODE.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
        nxt = totp_code(secret, step + 1)
        used |= {"totp code 1": current, "totp code 2": nxt}
        with_totp = a.login(carol["phone"], carol["password"], a.code_captcha("sms", carol["phone"]), totp=nxt)
        used |= {"carol totp access": with_totp.access_token, "carol totp refresh": with_totp.refresh_token}
        # Replay of the same code on the other replica: refused.
        expect_error(
            lambda: b.login(carol["username"], carol["password"], totp=nxt), CODE.UNAUTHENTICATED, "TOTP_INVALID"
        )
        expect_error(
            lambda: b.stub.DisableTotp(
                auth_pb2.DisableTotpRequest(password="Wrong-password-42", code=nxt), metadata=meta, timeout=CALL_TIMEOUT
            ),
            CODE.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )

    scenario = time.monotonic() - started

    # --- 3. secrets stay secret: logs (DEBUG) and every table of the database --------------------------
    outbox = redis.Redis.from_url(redis_url, decode_responses=True)
    sms_codes = outbox.lrange(f"{redis_prefix}dev-outbox:{carol['phone']}", 0, -1)
    outbox.close()
    used |= {f"carol sms code {i}": str(code) for i, code in enumerate(sms_codes)}
    logs = "\n".join(server.logs() for server in servers)
    levels = {entry.get("level") for server in servers for entry in server.log_entries()}
    assert "DEBUG" in levels and "auth.v1.Auth" in logs, "server logs were not captured"
    local, domain = alice["email"].split("@")
    assert f"{local[0]}***@{domain}" in logs, "the code sends should be logged with the address masked"
    assert not leaks(logs, b"", used), f"secrets in the server logs: {leaks(logs, b'', used)}"
    text, raw, counts = dump_database(database_url)
    assert counts["users"] >= 3 and counts["refresh_tokens"] >= 5 and counts["audit_events"] > 0, counts
    assert alice["username"] in text and raw, "the database dump is empty?"
    found = leaks(text, raw, used)
    assert not found, f"secrets in the database: {found}"
    print(f"scenario {scenario:.1f}s, {len(used)} secrets checked, {sum(counts.values())} rows dumped")


# ---------------------------------------------------------------------------------------------------
# 2: logout in one replica holds in the other, also after the Redis database is flushed


def test_logout_holds_across_replicas_and_a_redis_flush(
    tmp_path: Path, server_env: dict[str, str], database_url: str, redis_url: str, redis_prefix: str
) -> None:
    url, flush = dedicated_redis(redis_url)
    if url == redis_url:  # not TCP: emulate the flush by deleting this server's keys
        flush = lambda: _flush_prefix(url, redis_prefix)  # noqa: E731
    env = {**server_env, **LIMITS, **NO_CAPTCHA, "REDIS_URL": url}
    try:
        with running(tmp_path, env, env) as servers, clients(servers, url, redis_prefix) as (a, b):
            dave = unique_account("dave")
            a.register(dave)
            ended = a.login(dave["username"], dave["password"])
            kept = b.login(dave["email"], dave["password"])
            # B has seen the token as active (and cached that) before A revokes it.
            assert b.profile(ended.access_token).username == dave["username"]
            introspector = introspection_credential(database_url)
            assert b.introspect(ended.access_token, introspector).active

            assert a.logout(ended.access_token).success
            expect_error(lambda: b.profile(ended.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
            expect_error(lambda: b.logout(ended.access_token), CODE.UNAUTHENTICATED, "TOKEN_REVOKED")

            flush()
            for client in (b, a):
                for call in (
                    functools.partial(client.profile, ended.access_token),
                    functools.partial(client.lock_status, dave["username"], ended.access_token),
                    functools.partial(client.refresh, ended.refresh_token),
                ):
                    expect_error(call, CODE.UNAUTHENTICATED, "TOKEN_REVOKED")
                assert client.introspect(ended.access_token, introspector) == INACTIVE
            # Revocation is per session: the user's other session survives logout and flush.
            assert a.profile(kept.access_token).username == dave["username"]
            assert b.refresh(kept.refresh_token).access_token
    finally:
        flush()


# ---------------------------------------------------------------------------------------------------
# 4: a third-party client in another language


def test_node_grpc_js_client_register_login_refresh_logout(
    tmp_path: Path, server_env: dict[str, str], redis_url: str
) -> None:
    node = node_with_client_modules()
    google_protos = Path(google.api.annotations_pb2.__file__).parents[2]
    assert (google_protos / "google" / "api" / "annotations.proto").is_file()

    erin = unique_account("erin")
    with running(tmp_path, {**server_env, **NO_CAPTCHA}) as (server,):
        result = subprocess.run(
            [node, "client.js", server.target, str(google_protos)],
            cwd=NODE_CLIENT,
            env={
                "PATH": os.environ.get("PATH", ""),
                "AUTH_USERNAME": erin["username"],
                "AUTH_PASSWORD": erin["password"],
                "AUTH_EMAIL": erin["email"],
                "AUTH_PHONE": erin["phone"],
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        logs = server.logs
    assert result.returncode == 0, f"node client failed:\n{result.stdout}\n{result.stderr}\n{logs()[-3000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["register"]["message"]
    assert summary["login"] == {"jwt_parts": 3, "expires_in": 900, "has_refresh_token": True}
    assert summary["profile"]["username"] == erin["username"]
    assert summary["profile"]["email_masked"].startswith(erin["email"][0] + "***@")
    assert summary["refresh"] == {"jwt_parts": 3, "expires_in": 900, "rotated": True}
    assert summary["logout"] == {"success": True}
    assert summary["after_logout"] == {"code": "UNAUTHENTICATED", "reason": "TOKEN_REVOKED"}
    assert summary["refresh_after_logout"] == {"code": "UNAUTHENTICATED", "reason": "TOKEN_REVOKED"}
    assert summary["no_token"] == {"code": "UNAUTHENTICATED", "reason": "TOKEN_MISSING"}
    for secret in (erin["password"], erin["email"], erin["phone"]):
        assert secret not in result.stdout
