from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCaptchaRequest(_message.Message):
    __slots__ = ("captcha_type", "target")
    CAPTCHA_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    captcha_type: str
    target: str
    def __init__(self, captcha_type: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class GetCaptchaReply(_message.Message):
    __slots__ = ("captcha_id", "image_data")
    CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DATA_FIELD_NUMBER: _ClassVar[int]
    captcha_id: str
    image_data: str
    def __init__(self, captcha_id: _Optional[str] = ..., image_data: _Optional[str] = ...) -> None: ...

class VerifyCaptchaRequest(_message.Message):
    __slots__ = ("captcha_id", "captcha_code")
    CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_CODE_FIELD_NUMBER: _ClassVar[int]
    captcha_id: str
    captcha_code: str
    def __init__(self, captcha_id: _Optional[str] = ..., captcha_code: _Optional[str] = ...) -> None: ...

class VerifyCaptchaReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("username", "password", "email", "phone", "captcha_id", "captcha_code", "phone_captcha_id", "phone_captcha_code")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_CODE_FIELD_NUMBER: _ClassVar[int]
    PHONE_CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_CAPTCHA_CODE_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    email: str
    phone: str
    captcha_id: str
    captcha_code: str
    phone_captcha_id: str
    phone_captcha_code: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., email: _Optional[str] = ..., phone: _Optional[str] = ..., captcha_id: _Optional[str] = ..., captcha_code: _Optional[str] = ..., phone_captcha_id: _Optional[str] = ..., phone_captcha_code: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("username", "password", "captcha_id", "captcha_code", "totp_code")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_CODE_FIELD_NUMBER: _ClassVar[int]
    TOTP_CODE_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    captcha_id: str
    captcha_code: str
    totp_code: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., captcha_id: _Optional[str] = ..., captcha_code: _Optional[str] = ..., totp_code: _Optional[str] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("access_token", "refresh_token", "expires_in")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    refresh_token: str
    expires_in: int
    def __init__(self, access_token: _Optional[str] = ..., refresh_token: _Optional[str] = ..., expires_in: _Optional[int] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogoutReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class RefreshTokenRequest(_message.Message):
    __slots__ = ("refresh_token",)
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    refresh_token: str
    def __init__(self, refresh_token: _Optional[str] = ...) -> None: ...

class RefreshTokenReply(_message.Message):
    __slots__ = ("access_token", "refresh_token", "expires_in")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    refresh_token: str
    expires_in: int
    def __init__(self, access_token: _Optional[str] = ..., refresh_token: _Optional[str] = ..., expires_in: _Optional[int] = ...) -> None: ...

class LockStatusRequest(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class LockStatusReply(_message.Message):
    __slots__ = ("locked", "unlock_time", "failed_attempts", "max_attempts")
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_TIME_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    locked: bool
    unlock_time: int
    failed_attempts: int
    max_attempts: int
    def __init__(self, locked: _Optional[bool] = ..., unlock_time: _Optional[int] = ..., failed_attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class BeginTotpEnrollmentRequest(_message.Message):
    __slots__ = ("password",)
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    password: str
    def __init__(self, password: _Optional[str] = ...) -> None: ...

class BeginTotpEnrollmentReply(_message.Message):
    __slots__ = ("secret", "otpauth_uri")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    OTPAUTH_URI_FIELD_NUMBER: _ClassVar[int]
    secret: str
    otpauth_uri: str
    def __init__(self, secret: _Optional[str] = ..., otpauth_uri: _Optional[str] = ...) -> None: ...

class ConfirmTotpEnrollmentRequest(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    def __init__(self, code: _Optional[str] = ...) -> None: ...

class ConfirmTotpEnrollmentReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class DisableTotpRequest(_message.Message):
    __slots__ = ("password", "code")
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    password: str
    code: str
    def __init__(self, password: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class DisableTotpReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class GetJwksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetJwksReply(_message.Message):
    __slots__ = ("jwks_json", "keys")
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    jwks_json: str
    keys: _containers.RepeatedCompositeFieldContainer[Jwk]
    def __init__(self, jwks_json: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[Jwk, _Mapping]]] = ...) -> None: ...

class Jwk(_message.Message):
    __slots__ = ("kty", "crv", "x", "kid", "alg", "use")
    KTY_FIELD_NUMBER: _ClassVar[int]
    CRV_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    ALG_FIELD_NUMBER: _ClassVar[int]
    USE_FIELD_NUMBER: _ClassVar[int]
    kty: str
    crv: str
    x: str
    kid: str
    alg: str
    use: str
    def __init__(self, kty: _Optional[str] = ..., crv: _Optional[str] = ..., x: _Optional[str] = ..., kid: _Optional[str] = ..., alg: _Optional[str] = ..., use: _Optional[str] = ...) -> None: ...

class IntrospectTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class IntrospectTokenReply(_message.Message):
    __slots__ = ("active", "subject", "username", "expires_at", "issued_at", "jti", "revoked", "token_type", "scope", "issuer", "kid")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    active: bool
    subject: str
    username: str
    expires_at: int
    issued_at: int
    jti: str
    revoked: bool
    token_type: str
    scope: str
    issuer: str
    kid: str
    def __init__(self, active: _Optional[bool] = ..., subject: _Optional[str] = ..., username: _Optional[str] = ..., expires_at: _Optional[int] = ..., issued_at: _Optional[int] = ..., jti: _Optional[str] = ..., revoked: _Optional[bool] = ..., token_type: _Optional[str] = ..., scope: _Optional[str] = ..., issuer: _Optional[str] = ..., kid: _Optional[str] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetProfileReply(_message.Message):
    __slots__ = ("user_id", "username", "email_masked", "phone_masked", "name_masked", "totp_enabled", "created_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_MASKED_FIELD_NUMBER: _ClassVar[int]
    PHONE_MASKED_FIELD_NUMBER: _ClassVar[int]
    NAME_MASKED_FIELD_NUMBER: _ClassVar[int]
    TOTP_ENABLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    username: str
    email_masked: str
    phone_masked: str
    name_masked: str
    totp_enabled: bool
    created_at: int
    def __init__(self, user_id: _Optional[int] = ..., username: _Optional[str] = ..., email_masked: _Optional[str] = ..., phone_masked: _Optional[str] = ..., name_masked: _Optional[str] = ..., totp_enabled: _Optional[bool] = ..., created_at: _Optional[int] = ...) -> None: ...

class ChangePasswordRequest(_message.Message):
    __slots__ = ("current_password", "new_password", "totp_code")
    CURRENT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    TOTP_CODE_FIELD_NUMBER: _ClassVar[int]
    current_password: str
    new_password: str
    totp_code: str
    def __init__(self, current_password: _Optional[str] = ..., new_password: _Optional[str] = ..., totp_code: _Optional[str] = ...) -> None: ...

class ChangePasswordReply(_message.Message):
    __slots__ = ("sessions_ended",)
    SESSIONS_ENDED_FIELD_NUMBER: _ClassVar[int]
    sessions_ended: int
    def __init__(self, sessions_ended: _Optional[int] = ...) -> None: ...

class RequestPasswordResetRequest(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: str
    def __init__(self, target: _Optional[str] = ...) -> None: ...

class RequestPasswordResetReply(_message.Message):
    __slots__ = ("reset_id",)
    RESET_ID_FIELD_NUMBER: _ClassVar[int]
    reset_id: str
    def __init__(self, reset_id: _Optional[str] = ...) -> None: ...

class ConfirmPasswordResetRequest(_message.Message):
    __slots__ = ("reset_id", "code", "new_password")
    RESET_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    reset_id: str
    code: str
    new_password: str
    def __init__(self, reset_id: _Optional[str] = ..., code: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class ConfirmPasswordResetReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "created_at", "last_used_at", "client_address", "user_agent", "current", "expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    created_at: int
    last_used_at: int
    client_address: str
    user_agent: str
    current: bool
    expires_at: int
    def __init__(self, session_id: _Optional[str] = ..., created_at: _Optional[int] = ..., last_used_at: _Optional[int] = ..., client_address: _Optional[str] = ..., user_agent: _Optional[str] = ..., current: _Optional[bool] = ..., expires_at: _Optional[int] = ...) -> None: ...

class ListSessionsReply(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class RevokeSessionRequest(_message.Message):
    __slots__ = ("session_id", "username")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    username: str
    def __init__(self, session_id: _Optional[str] = ..., username: _Optional[str] = ...) -> None: ...

class RevokeSessionReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class RevokeOtherSessionsRequest(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class RevokeOtherSessionsReply(_message.Message):
    __slots__ = ("sessions_ended",)
    SESSIONS_ENDED_FIELD_NUMBER: _ClassVar[int]
    sessions_ended: int
    def __init__(self, sessions_ended: _Optional[int] = ...) -> None: ...

class ChangeEmailRequest(_message.Message):
    __slots__ = ("new_email", "captcha_id", "captcha_code", "password", "totp_code")
    NEW_EMAIL_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_CODE_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    TOTP_CODE_FIELD_NUMBER: _ClassVar[int]
    new_email: str
    captcha_id: str
    captcha_code: str
    password: str
    totp_code: str
    def __init__(self, new_email: _Optional[str] = ..., captcha_id: _Optional[str] = ..., captcha_code: _Optional[str] = ..., password: _Optional[str] = ..., totp_code: _Optional[str] = ...) -> None: ...

class ChangeEmailReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class ChangePhoneRequest(_message.Message):
    __slots__ = ("new_phone", "captcha_id", "captcha_code", "password", "totp_code")
    NEW_PHONE_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTCHA_CODE_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    TOTP_CODE_FIELD_NUMBER: _ClassVar[int]
    new_phone: str
    captcha_id: str
    captcha_code: str
    password: str
    totp_code: str
    def __init__(self, new_phone: _Optional[str] = ..., captcha_id: _Optional[str] = ..., captcha_code: _Optional[str] = ..., password: _Optional[str] = ..., totp_code: _Optional[str] = ...) -> None: ...

class ChangePhoneReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class DeleteAccountRequest(_message.Message):
    __slots__ = ("password", "username", "totp_code")
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    TOTP_CODE_FIELD_NUMBER: _ClassVar[int]
    password: str
    username: str
    totp_code: str
    def __init__(self, password: _Optional[str] = ..., username: _Optional[str] = ..., totp_code: _Optional[str] = ...) -> None: ...

class DeleteAccountReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...
