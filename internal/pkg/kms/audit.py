"""Audit of key lifecycle events (SECURITY.md item 17): versions, counts and outcomes, never key bytes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)

ROTATE = "kms.key_rotate"
DESTROY = "kms.key_destroy"
MAINTENANCE = "kms.maintenance"


class AuditSink(Protocol):
    async def record(self, event: str, outcome: str, details: dict[str, str]) -> None: ...


class NoopAuditSink:
    async def record(self, event: str, outcome: str, details: dict[str, str]) -> None:
        return None


async def record_safely(sink: AuditSink, event: str, outcome: str, details: Mapping[str, object]) -> None:
    """Audit failures are logged, not raised: the key operation they describe has already happened."""
    try:
        await sink.record(event, outcome, {k: str(v) for k, v in details.items()})
    except Exception as exc:
        log.warning("kms audit record failed", extra={"audit_event": event, "error": type(exc).__name__})
