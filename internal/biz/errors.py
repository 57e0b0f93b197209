"""Domain errors: a gRPC-free description of what went wrong.

Each error carries a stable ``reason`` (declared in the proto ``ErrorReason`` enums) and optional safe
``metadata``. The server's error interceptor is the one place that turns them into a ``google.rpc.Status``
with an ``ErrorInfo`` detail, exactly as Kratos does.
"""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """Base of every error a client may see. ``message`` must never contain a secret."""

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    pass


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class ResourceExhausted(DomainError):
    pass


class Unavailable(DomainError):
    pass
