"""Helpers for the account lifecycle e2e tests: a sync client on one server and the development outbox."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.e2e.harness import ServerProcess, auth, totp_code

CALL_TIMEOUT = 30
CODE = grpc.StatusCode


def expect_error(call: Callable[[], object], code: grpc.StatusCode, reason: str) -> error_details_pb2.ErrorInfo:
    """Run ``call``; it must fail with ``code`` and one ErrorInfo carrying ``reason``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = cast(grpc.Call, caught.value)
    status = rpc_status.from_call(err)
    assert status is not None, f"no google.rpc.Status: {err.code()} {err.details()}"
    info = error_details_pb2.ErrorInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info), status
    assert (err.code(), info.reason) == (code, reason), err.details()
    return info


def wrong_totp_code(secret_b32: str, step: int) -> str:
    """A well-formed code that matches no step near ``step`` (so it is wrong, not early or late)."""
    near = {totp_code(secret_b32, s) for s in range(step - 2, step + 4)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


class Outbox:
    """The development outbox in Redis: what the service "sent" to each target, newest first."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self._prefix = prefix

    def close(self) -> None:
        self._redis.close()

    def messages(self, target: str) -> list[str]:
        return cast(list[str], self._redis.lrange(f"{self._prefix}dev-outbox:{target}", 0, -1))

    def hashes(self, infix: str) -> list[dict[str, str]]:
        """Every Redis hash of the server's under ``{prefix}{infix}`` (e.g. the stored reset codes)."""
        keys = self._redis.scan_iter(match=f"{self._prefix}{infix}*")
        return [cast(dict[str, str], self._redis.hgetall(key)) for key in keys]

    def wait_new(self, target: str, seen: int, timeout: float = 20) -> str:
        """The newest message once there are more than ``seen`` (reset codes are sent in the background)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.messages(target)
            if len(messages) > seen:
                return messages[0]
            time.sleep(0.05)
        raise AssertionError("nothing arrived in the development outbox")


class Client:
    def __init__(self, server: ServerProcess, outbox: Outbox, user_agent: str = "") -> None:
        options = [("grpc.primary_user_agent", user_agent)] if user_agent else []
        self.channel = grpc.insecure_channel(server.target, options=options)
        self.stub = auth_pb2_grpc.AuthStub(self.channel)
        self.outbox = outbox

    def close(self) -> None:
        self.channel.close()

    def code(self, kind: str, target: str) -> tuple[str, str]:
        """GetCaptcha(kind, target) and the code the outbox received."""
        seen = len(self.outbox.messages(target))
        reply = self.stub.GetCaptcha(auth_pb2.GetCaptchaRequest(captcha_type=kind, target=target), timeout=CALL_TIMEOUT)
        return reply.captcha_id, self.outbox.wait_new(target, seen)

    def register(self, account: dict[str, str], with_phone: bool = True) -> None:
        email_proof = self.code("email", account["email"])
        phone_proof = self.code("sms", account["phone"]) if with_phone else ("", "")
        self.stub.Register(
            auth_pb2.RegisterRequest(
                username=account["username"],
                password=account["password"],
                email=account["email"],
                phone=account["phone"] if with_phone else "",
                captcha_id=email_proof[0],
                captcha_code=email_proof[1],
                phone_captcha_id=phone_proof[0],
                phone_captcha_code=phone_proof[1],
            ),
            timeout=CALL_TIMEOUT,
        )

    def login(self, email: str, password: str) -> auth_pb2.LoginReply:
        """Login by email with an email code (captchas are on)."""
        captcha = self.code("email", email)
        request = auth_pb2.LoginRequest(
            username=email, password=password, captcha_id=captcha[0], captcha_code=captcha[1]
        )
        return self.stub.Login(request, timeout=CALL_TIMEOUT)

    def profile(self, token: str) -> auth_pb2.GetProfileReply:
        return self.stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=auth(token), timeout=CALL_TIMEOUT)

    def refresh(self, refresh_token: str) -> auth_pb2.RefreshTokenReply:
        return self.stub.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=refresh_token), timeout=CALL_TIMEOUT)

    def enable_totp(self, token: str, password: str) -> tuple[str, int]:
        """Enrol and confirm TOTP; the secret and the time step the confirmation used (now spent)."""
        meta = auth(token)
        begin = auth_pb2.BeginTotpEnrollmentRequest(password=password)
        secret = self.stub.BeginTotpEnrollment(begin, metadata=meta, timeout=CALL_TIMEOUT).secret
        step = int(time.time()) // 30
        confirm = auth_pb2.ConfirmTotpEnrollmentRequest(code=totp_code(secret, step))
        assert self.stub.ConfirmTotpEnrollment(confirm, metadata=meta, timeout=CALL_TIMEOUT).success
        return secret, step

    def change_password(self, token: str, current: str, new: str, totp: str = "") -> auth_pb2.ChangePasswordReply:
        request = auth_pb2.ChangePasswordRequest(current_password=current, new_password=new, totp_code=totp)
        return self.stub.ChangePassword(request, metadata=auth(token), timeout=CALL_TIMEOUT)

    def request_reset(self, target: str) -> auth_pb2.RequestPasswordResetReply:
        return self.stub.RequestPasswordReset(auth_pb2.RequestPasswordResetRequest(target=target), timeout=CALL_TIMEOUT)

    def confirm_reset(self, reset_id: str, code: str, new_password: str) -> auth_pb2.ConfirmPasswordResetReply:
        request = auth_pb2.ConfirmPasswordResetRequest(reset_id=reset_id, code=code, new_password=new_password)
        return self.stub.ConfirmPasswordReset(request, timeout=CALL_TIMEOUT)

    def sessions(self, token: str, username: str = "") -> auth_pb2.ListSessionsReply:
        request = auth_pb2.ListSessionsRequest(username=username)
        return self.stub.ListSessions(request, metadata=auth(token), timeout=CALL_TIMEOUT)

    def revoke(self, token: str, session_id: str, username: str = "") -> auth_pb2.RevokeSessionReply:
        request = auth_pb2.RevokeSessionRequest(session_id=session_id, username=username)
        return self.stub.RevokeSession(request, metadata=auth(token), timeout=CALL_TIMEOUT)

    def revoke_others(self, token: str, username: str = "") -> auth_pb2.RevokeOtherSessionsReply:
        request = auth_pb2.RevokeOtherSessionsRequest(username=username)
        return self.stub.RevokeOtherSessions(request, metadata=auth(token), timeout=CALL_TIMEOUT)

    def change_email(
        self, token: str, new_email: str, proof: tuple[str, str], password: str, totp: str = ""
    ) -> auth_pb2.ChangeEmailReply:
        request = auth_pb2.ChangeEmailRequest(
            new_email=new_email, captcha_id=proof[0], captcha_code=proof[1], password=password, totp_code=totp
        )
        return self.stub.ChangeEmail(request, metadata=auth(token), timeout=CALL_TIMEOUT)

    def change_phone(
        self, token: str, new_phone: str, proof: tuple[str, str], password: str, totp: str = ""
    ) -> auth_pb2.ChangePhoneReply:
        request = auth_pb2.ChangePhoneRequest(
            new_phone=new_phone, captcha_id=proof[0], captcha_code=proof[1], password=password, totp_code=totp
        )
        return self.stub.ChangePhone(request, metadata=auth(token), timeout=CALL_TIMEOUT)

    def delete(self, token: str, password: str = "", username: str = "", totp: str = "") -> auth_pb2.DeleteAccountReply:
        request = auth_pb2.DeleteAccountRequest(password=password, username=username, totp_code=totp)
        return self.stub.DeleteAccount(request, metadata=auth(token), timeout=CALL_TIMEOUT)
