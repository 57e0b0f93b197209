"""The Kratos error model as protobuf: google.rpc.Status with one ErrorInfo detail.

Used by the server's error interceptor for whole calls and by servicers for per-item batch results.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from internal.biz import errors

_GRPC_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}
ERROR_DOMAIN = "authkms"


def status_proto(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
) -> status_pb2.Status:
    """A google.rpc.Status with one ErrorInfo detail, exactly what Kratos' errors.GRPCStatus() sends."""
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {}))
    return status


def domain_status_proto(exc: errors.DomainError) -> status_pb2.Status:
    """The status of a domain error, e.g. for one item of a batch reply."""
    code = next(c for kind, c in _GRPC_CODES.items() if isinstance(exc, kind))
    return status_proto(code, exc.reason, exc.message, exc.metadata)
