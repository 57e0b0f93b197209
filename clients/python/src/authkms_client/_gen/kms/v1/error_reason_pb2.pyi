from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    VALIDATION_ERROR: _ClassVar[ErrorReason]
    CIPHERTEXT_INVALID: _ClassVar[ErrorReason]
    KEY_NOT_FOUND: _ClassVar[ErrorReason]
    NO_ACTIVE_KEY: _ClassVar[ErrorReason]
    KMS_NOT_INITIALIZED: _ClassVar[ErrorReason]
    PLAINTEXT_TOO_LARGE: _ClassVar[ErrorReason]
    BATCH_TOO_LARGE: _ClassVar[ErrorReason]
    CREDENTIALS_MISSING: _ClassVar[ErrorReason]
    CREDENTIALS_INVALID: _ClassVar[ErrorReason]
    PERMISSION_DENIED: _ClassVar[ErrorReason]
    ROTATION_IN_PROGRESS: _ClassVar[ErrorReason]
    SERVICE_UNAVAILABLE: _ClassVar[ErrorReason]
    INTERNAL_ERROR: _ClassVar[ErrorReason]
    CREDENTIAL_NOT_FOUND: _ClassVar[ErrorReason]
    CREDENTIAL_EXISTS: _ClassVar[ErrorReason]
    KEY_PENDING_DESTRUCTION: _ClassVar[ErrorReason]
    KEY_EXISTS: _ClassVar[ErrorReason]
    KEY_STATE_INVALID: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
VALIDATION_ERROR: ErrorReason
CIPHERTEXT_INVALID: ErrorReason
KEY_NOT_FOUND: ErrorReason
NO_ACTIVE_KEY: ErrorReason
KMS_NOT_INITIALIZED: ErrorReason
PLAINTEXT_TOO_LARGE: ErrorReason
BATCH_TOO_LARGE: ErrorReason
CREDENTIALS_MISSING: ErrorReason
CREDENTIALS_INVALID: ErrorReason
PERMISSION_DENIED: ErrorReason
ROTATION_IN_PROGRESS: ErrorReason
SERVICE_UNAVAILABLE: ErrorReason
INTERNAL_ERROR: ErrorReason
CREDENTIAL_NOT_FOUND: ErrorReason
CREDENTIAL_EXISTS: ErrorReason
KEY_PENDING_DESTRUCTION: ErrorReason
KEY_EXISTS: ErrorReason
KEY_STATE_INVALID: ErrorReason
