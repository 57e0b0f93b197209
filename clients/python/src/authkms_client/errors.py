"""The errors a caller sees: the server's gRPC status and ErrorInfo reason, or the envelope's own refusal."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class KmsError(Exception):
    """An RPC failed: ``code`` (gRPC status), ``reason`` (kms.v1.ErrorReason name), safe ``metadata``."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class CiphertextInvalidError(KmsError):
    """A sealed value (or a wrapped data key) does not open: tampered with, or given the wrong field, context or
    key. Which of these it was is deliberately not told."""

    def __init__(self, message: str = "sealed value is invalid or does not match its field, context or key") -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, "CIPHERTEXT_INVALID", message)


def from_rpc_error(error: grpc.aio.AioRpcError) -> KmsError:
    """The KmsError (CiphertextInvalidError for CIPHERTEXT_INVALID) an RPC error carries."""
    code, message = error.code(), error.details() or ""
    for key, value in error.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return from_status(status_pb2.Status.FromString(value), code, message)
    return KmsError(code, code.name, message)


def from_status(
    status: status_pb2.Status, code: grpc.StatusCode | None = None, message: str | None = None
) -> KmsError:
    """The KmsError of a ``google.rpc.Status`` (an RPC's, or one batch item's)."""
    code = code or _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    message = message if message is not None else status.message
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            if info.reason == "CIPHERTEXT_INVALID":
                return CiphertextInvalidError(message)
            return KmsError(code, info.reason, message, dict(info.metadata))
    return KmsError(code, code.name, message)
