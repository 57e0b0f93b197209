"""auth.v1.Auth servicer: DTO ↔ domain conversion, one use case per RPC, replies.

Errors are raised as domain errors; the server's ErrorInterceptor turns them into a gRPC status with
an ErrorInfo. RPCs that require an access token resolve it to a ``Caller`` first
(``TokenUsecase.authenticate``: TOKEN_MISSING / TOKEN_INVALID / TOKEN_EXPIRED / TOKEN_REVOKED).
LockStatus also accepts a service credential (``akms_…``); it becomes a ``Caller`` with the
credential's scopes and no user, so only ``auth.admin`` lets it act for another account.
IntrospectToken accepts only a service credential (scope ``auth.introspect``), never a user's token.
The account lifecycle RPCs (ChangePassword .. DeleteAccount) call ``AccountUsecase``; ListSessions,
RevokeSession, RevokeOtherSessions and DeleteAccount also accept an ``auth.admin`` credential.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from internal.biz.account import AccountUsecase
from internal.biz.auth import AuthUsecase, LoginAttempt, Registration
from internal.biz.captcha import CaptchaUsecase
from internal.biz.credentials import TOKEN_PREFIX, CredentialUsecase
from internal.biz.errors import PermissionDenied, Unauthenticated
from internal.biz.ports import Caller
from internal.biz.token import TokenUsecase
from internal.biz.totp import TotpUsecase
from internal.biz.user import UserUsecase
from internal.service.metadata import bearer_token, client_address, user_agent

_JWK_FIELDS = ("kty", "crv", "x", "kid", "alg", "use")
# As the Go service sends it: a web page puts image_data straight into <img src>.
PNG_DATA_URI = "data:image/png;base64,"


class AuthService(auth_pb2_grpc.AuthServicer):
    def __init__(
        self,
        auth: AuthUsecase,
        tokens: TokenUsecase,
        totp: TotpUsecase,
        users: UserUsecase,
        captcha: CaptchaUsecase,
        credentials: CredentialUsecase | None = None,
        accounts: AccountUsecase | None = None,
    ) -> None:
        self._auth = auth
        self._tokens = tokens
        self._totp = totp
        self._users = users
        self._captcha = captcha
        self._credentials = credentials
        self._accounts_usecase = accounts

    async def _caller(self, context: grpc.aio.ServicerContext, *, allow_service: bool = False) -> Caller:
        """The user behind the access token or, where ``allow_service``, a service credential's scopes."""
        token = bearer_token(context)
        if allow_service and token.startswith(TOKEN_PREFIX):
            return await self._service_caller(token)
        return await self._tokens.authenticate(token)

    async def _service_caller(self, token: str) -> Caller:
        credential = await self._credentials.lookup(token) if self._credentials is not None else None
        if credential is None:
            raise Unauthenticated("TOKEN_INVALID", "token is invalid")
        return Caller(scopes=credential.scopes)

    async def GetCaptcha(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.GetCaptchaReply:
        """Issue an image captcha, or send an SMS/email code to ``target``."""
        challenge = await self._captcha.issue(request.captcha_type, request.target, client_address(context))
        image = PNG_DATA_URI + base64.b64encode(challenge.image_png).decode() if challenge.image_png else ""
        return auth_pb2.GetCaptchaReply(captcha_id=challenge.captcha_id, image_data=image)

    async def VerifyCaptcha(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.VerifyCaptchaReply:
        """Check a captcha answer without consuming it."""
        return auth_pb2.VerifyCaptchaReply(success=await self._captcha.verify(request.captcha_id, request.captcha_code))

    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.RegisterReply:
        """Create an account (USER_EXISTS when the username, email or phone is taken)."""
        registration = Registration(
            username=request.username,
            password=request.password,
            email=request.email,
            phone=request.phone,
            captcha_id=request.captcha_id,
            captcha_code=request.captcha_code,
            phone_captcha_id=request.phone_captcha_id,
            phone_captcha_code=request.phone_captcha_code,
        )
        await self._auth.register(registration, client_address(context))
        return auth_pb2.RegisterReply(message="registration successful")

    async def Login(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.LoginReply:
        """Exchange username/email/phone + password (+ captcha, + TOTP) for a token pair."""
        attempt = LoginAttempt(
            identifier=request.username,
            password=request.password,
            captcha_id=request.captcha_id,
            captcha_code=request.captcha_code,
            totp_code=request.totp_code,
            user_agent=user_agent(context),
        )
        pair = await self._auth.login(attempt, client_address(context))
        return auth_pb2.LoginReply(
            access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
        )

    async def Logout(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.LogoutReply:
        """Revoke the presented access token and its whole session."""
        caller = await self._caller(context)
        await self._tokens.logout(caller, client_address(context))
        return auth_pb2.LogoutReply(success=True)

    async def RefreshToken(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.RefreshTokenReply:
        """Rotate a refresh token (REFRESH_TOKEN_REUSED revokes the session)."""
        if not request.refresh_token.strip():
            raise Unauthenticated("TOKEN_MISSING", "refresh_token is required")
        pair = await self._tokens.refresh(request.refresh_token, client_address(context))
        return auth_pb2.RefreshTokenReply(
            access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
        )

    async def LockStatus(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.LockStatusReply:
        """Lock state of the caller's own account (any account with an ``auth.admin`` credential)."""
        caller = await self._caller(context, allow_service=True)
        status = await self._auth.lock_status(caller, request.username)
        return auth_pb2.LockStatusReply(
            locked=status.locked,
            unlock_time=status.unlock_time,
            failed_attempts=status.failed_attempts,
            max_attempts=status.max_attempts,
        )

    async def BeginTotpEnrollment(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> auth_pb2.BeginTotpEnrollmentReply:
        """A pending TOTP secret and its otpauth:// URI, after re-checking the password."""
        caller = await self._caller(context)
        enrollment = await self._totp.begin_enrollment(caller, request.password, client_address(context))
        return auth_pb2.BeginTotpEnrollmentReply(secret=enrollment.secret, otpauth_uri=enrollment.otpauth_uri)

    async def ConfirmTotpEnrollment(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ConfirmTotpEnrollmentReply:
        """Enable TOTP with a current code; the caller's other sessions end."""
        await self._totp.confirm_enrollment(await self._caller(context), request.code, client_address(context))
        return auth_pb2.ConfirmTotpEnrollmentReply(success=True)

    async def DisableTotp(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.DisableTotpReply:
        """Disable TOTP after re-checking password and code; the caller's other sessions end."""
        caller = await self._caller(context)
        await self._totp.disable(caller, request.password, request.code, client_address(context))
        return auth_pb2.DisableTotpReply(success=True)

    async def GetJwks(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.GetJwksReply:
        """Public verification keys (empty in HS256 mode)."""
        keys = self._tokens.jwks()
        return auth_pb2.GetJwksReply(
            jwks_json=json.dumps({"keys": keys}, separators=(",", ":")),
            keys=[auth_pb2.Jwk(**{f: key.get(f, "") for f in _JWK_FIELDS}) for key in keys],
        )

    async def IntrospectToken(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.IntrospectTokenReply:
        """RFC 7662 for service credentials with ``auth.introspect`` (see TokenUsecase.introspect)."""
        token = bearer_token(context)
        if not token.startswith(TOKEN_PREFIX):
            raise PermissionDenied("PERMISSION_DENIED", "introspection needs a service credential")
        info = await self._tokens.introspect(await self._service_caller(token), request.token)
        return auth_pb2.IntrospectTokenReply(
            active=info.active,
            subject=info.subject,
            username=info.username,
            expires_at=info.expires_at,
            issued_at=info.issued_at,
            jti=info.jti,
            revoked=info.revoked,
            token_type=info.token_type,
            scope=info.scope,
            issuer=info.issuer,
            kid=info.kid,
        )

    async def GetProfile(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.GetProfileReply:
        """The caller's profile with PII masked."""
        profile = await self._users.get_profile(await self._caller(context))
        return auth_pb2.GetProfileReply(
            user_id=profile.user_id,
            username=profile.username,
            email_masked=profile.email_masked,
            phone_masked=profile.phone_masked,
            name_masked=profile.name_masked,
            totp_enabled=profile.totp_enabled,
            created_at=int(profile.created_at.timestamp()),
        )

    # -- account lifecycle (docs/api.md "Account lifecycle") -------------------------------------------

    @property
    def _accounts(self) -> AccountUsecase:
        if self._accounts_usecase is None:
            raise RuntimeError("AuthService was built without the account use case")
        return self._accounts_usecase

    async def ChangePassword(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.ChangePasswordReply:
        """New password after re-checking the current one; the caller's other sessions end."""
        caller = await self._caller(context)
        ended = await self._accounts.change_password(
            caller, request.current_password, request.new_password, client_address(context), request.totp_code
        )
        return auth_pb2.ChangePasswordReply(sessions_ended=ended)

    async def RequestPasswordReset(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RequestPasswordResetReply:
        """A reset id, the same whether or not an account has the address; the code is sent in the background."""
        reset_id = await self._accounts.request_reset(request.target, client_address(context))
        return auth_pb2.RequestPasswordResetReply(reset_id=reset_id)

    async def ConfirmPasswordReset(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ConfirmPasswordResetReply:
        """New password with a reset code; every session of the account ends."""
        await self._accounts.confirm_reset(
            request.reset_id, request.code, request.new_password, client_address(context)
        )
        return auth_pb2.ConfirmPasswordResetReply(success=True)

    async def ListSessions(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.ListSessionsReply:
        """The caller's active sessions (any user's with an ``auth.admin`` credential)."""
        caller = await self._caller(context, allow_service=True)
        views = await self._accounts.list_sessions(caller, request.username)
        return auth_pb2.ListSessionsReply(
            sessions=[
                auth_pb2.Session(
                    session_id=v.session_id,
                    created_at=v.created_at,
                    last_used_at=v.last_used_at,
                    client_address=v.client_address,
                    user_agent=v.user_agent,
                    current=v.current,
                    expires_at=v.expires_at,
                )
                for v in views
            ]
        )

    async def RevokeSession(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.RevokeSessionReply:
        """End one session (SESSION_NOT_FOUND when it is not an active one of the user)."""
        caller = await self._caller(context, allow_service=True)
        await self._accounts.revoke_session(caller, request.session_id, request.username, client_address(context))
        return auth_pb2.RevokeSessionReply(success=True)

    async def RevokeOtherSessions(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeOtherSessionsReply:
        """End every session but the current one (all of the named user's, for an admin)."""
        caller = await self._caller(context, allow_service=True)
        ended = await self._accounts.revoke_other_sessions(caller, request.username, client_address(context))
        return auth_pb2.RevokeOtherSessionsReply(sessions_ended=ended)

    async def ChangeEmail(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.ChangeEmailReply:
        """Replace the email, proven with a code sent to the new address; the old one is notified."""
        caller = await self._caller(context)
        await self._accounts.change_email(
            caller,
            request.new_email,
            request.captcha_id,
            request.captcha_code,
            request.password,
            client_address(context),
            request.totp_code,
        )
        return auth_pb2.ChangeEmailReply(success=True)

    async def ChangePhone(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.ChangePhoneReply:
        """Replace the phone, proven with a code sent to the new phone; the old one is notified."""
        caller = await self._caller(context)
        await self._accounts.change_phone(
            caller,
            request.new_phone,
            request.captcha_id,
            request.captcha_code,
            request.password,
            client_address(context),
            request.totp_code,
        )
        return auth_pb2.ChangePhoneReply(success=True)

    async def DeleteAccount(self, request: Any, context: grpc.aio.ServicerContext) -> auth_pb2.DeleteAccountReply:
        """Delete the caller's account (password), or the named one with an ``auth.admin`` credential."""
        caller = await self._caller(context, allow_service=True)
        await self._accounts.delete_account(
            caller, request.password, request.username, client_address(context), request.totp_code
        )
        return auth_pb2.DeleteAccountReply(success=True)
