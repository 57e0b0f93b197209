from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    VALIDATION_ERROR: _ClassVar[ErrorReason]
    PASSWORD_WEAK: _ClassVar[ErrorReason]
    CAPTCHA_REQUIRED: _ClassVar[ErrorReason]
    CAPTCHA_INVALID: _ClassVar[ErrorReason]
    CAPTCHA_EXPIRED: _ClassVar[ErrorReason]
    USER_EXISTS: _ClassVar[ErrorReason]
    USER_NOT_FOUND: _ClassVar[ErrorReason]
    INVALID_CREDENTIALS: _ClassVar[ErrorReason]
    TOKEN_MISSING: _ClassVar[ErrorReason]
    TOKEN_INVALID: _ClassVar[ErrorReason]
    TOKEN_EXPIRED: _ClassVar[ErrorReason]
    TOKEN_REVOKED: _ClassVar[ErrorReason]
    REFRESH_TOKEN_REUSED: _ClassVar[ErrorReason]
    TOTP_REQUIRED: _ClassVar[ErrorReason]
    TOTP_INVALID: _ClassVar[ErrorReason]
    TOTP_NOT_ENROLLED: _ClassVar[ErrorReason]
    TOTP_ALREADY_ENABLED: _ClassVar[ErrorReason]
    ACCOUNT_LOCKED: _ClassVar[ErrorReason]
    PERMISSION_DENIED: _ClassVar[ErrorReason]
    RATE_LIMITED: _ClassVar[ErrorReason]
    SERVICE_UNAVAILABLE: _ClassVar[ErrorReason]
    INTERNAL_ERROR: _ClassVar[ErrorReason]
    SESSION_NOT_FOUND: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
VALIDATION_ERROR: ErrorReason
PASSWORD_WEAK: ErrorReason
CAPTCHA_REQUIRED: ErrorReason
CAPTCHA_INVALID: ErrorReason
CAPTCHA_EXPIRED: ErrorReason
USER_EXISTS: ErrorReason
USER_NOT_FOUND: ErrorReason
INVALID_CREDENTIALS: ErrorReason
TOKEN_MISSING: ErrorReason
TOKEN_INVALID: ErrorReason
TOKEN_EXPIRED: ErrorReason
TOKEN_REVOKED: ErrorReason
REFRESH_TOKEN_REUSED: ErrorReason
TOTP_REQUIRED: ErrorReason
TOTP_INVALID: ErrorReason
TOTP_NOT_ENROLLED: ErrorReason
TOTP_ALREADY_ENABLED: ErrorReason
ACCOUNT_LOCKED: ErrorReason
PERMISSION_DENIED: ErrorReason
RATE_LIMITED: ErrorReason
SERVICE_UNAVAILABLE: ErrorReason
INTERNAL_ERROR: ErrorReason
SESSION_NOT_FOUND: ErrorReason
