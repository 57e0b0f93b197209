"""Captchas and one-time codes (image, SMS, email): issue, verify, consume once.

Security properties (docs/security.md item 10):

* codes come from ``secrets`` (a CSPRNG); ids are 192-bit random URL-safe strings;
* the store sees only ``HMAC-SHA256(code_key, id + code)``. A plain SHA-256 of id + code would stop
  rainbow tables (ids are random) but not enumeration: a 6-digit code has 10^6 candidates, so anyone
  who can read Redis (a dump, a replica, ``MONITOR``) would reverse it in milliseconds. The keyed HMAC
  needs ``code_key``, which lives only in the service's memory (derived from the KMS service secret by
  ``internal.container.captcha_code_key``, so every replica has the same one);
* the target a code was sent to is stored as a keyed digest too (no plaintext PII in Redis) and a
  code is accepted only together with that target;
* every check-and-set runs as one Redis Lua script, so a code is single-use across replicas and the
  per-code attempt limit cannot be raced;
* sends are rate-limited per target and per client network, image captchas per client network.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import math
import re
import secrets
import string
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from internal.biz import identifiers
from internal.biz.errors import InvalidArgument, ResourceExhausted
from internal.biz.lockout import client_network
from internal.biz.masking import mask_email, mask_phone
from internal.biz.ports import RateLimiter

if TYPE_CHECKING:
    from internal.conf.config import Auth

log = logging.getLogger(__name__)

IMAGE = "image"
SMS = "sms"
EMAIL = "email"
CAPTCHA_TYPES = (IMAGE, SMS, EMAIL)

# What senders put in the message ("Your verification code is …").
PURPOSE_VERIFICATION = "verification"

_ID_BYTES = 24  # 192 bits, 32 URL-safe characters
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MIN_CODE_KEY_BYTES = 16


# ---------------------------------------------------------------------------------------------------
# Domain types


@dataclass(frozen=True)
class CaptchaChallenge:
    """What the client gets back: the id to send with the code, and the PNG for image captchas."""

    captcha_id: str
    image_png: bytes | None


@dataclass(frozen=True)
class CaptchaRecord:
    """What the store keeps for one captcha. ``target`` is a keyed digest ("" for image captchas)."""

    code_hash: str
    captcha_type: str
    target: str


class CaptchaCheck(enum.Enum):
    """Outcome of one atomic check in the store."""

    OK = "ok"
    UNKNOWN = "unknown"  # never issued, expired, consumed or deleted after too many attempts
    MISMATCH = "mismatch"  # wrong code, attempt counted
    EXHAUSTED = "exhausted"  # this failure used up the attempts; the captcha is gone
    WRONG_TARGET = "wrong_target"  # right code, but sent to another email/phone; attempt counted


@dataclass(frozen=True)
class CaptchaSettings:
    """The captcha policy, from ``auth`` configuration (see :meth:`from_conf`)."""

    enabled: bool = True
    expiration: timedelta = timedelta(minutes=5)
    length: int = 6
    max_attempts: int = 5
    send_limit_per_target: int = 5
    send_limit_per_client: int = 20
    # Image captchas are cheap for the user to need again (every failed login), so allow more.
    image_limit_per_client: int = 60
    send_window: timedelta = timedelta(hours=1)

    @classmethod
    def from_conf(cls, auth: Auth) -> CaptchaSettings:
        c = auth.captcha
        return cls(
            enabled=auth.captcha_enabled and c.enabled,
            expiration=c.expiration,
            length=c.length,
            max_attempts=c.max_attempts,
            send_limit_per_target=c.send_limit_per_target,
            send_limit_per_client=c.send_limit_per_client,
            image_limit_per_client=3 * c.send_limit_per_client,
            send_window=c.send_window,
        )


# ---------------------------------------------------------------------------------------------------
# Ports (implemented in internal.data)


class CaptchaStore(Protocol):
    """Shared captcha state (Redis). Every method is atomic across replicas."""

    async def save(self, captcha_id: str, record: CaptchaRecord, ttl: timedelta) -> None: ...

    async def check(self, captcha_id: str, code_hash: str, max_attempts: int) -> CaptchaCheck:
        """Compare without consuming; a mismatch counts an attempt, the last one deletes."""
        ...

    async def consume(
        self,
        captcha_id: str,
        code_hash: str,
        target_digests: Collection[str],
        max_attempts: int,
        require_target: bool = False,
    ) -> CaptchaCheck:
        """Compare, check the target, delete on success, count failures.

        Image captchas have no target: they pass the target check unless ``require_target``.
        """
        ...

    async def delete(self, captcha_id: str) -> None: ...


class CodeSender(Protocol):
    """Delivers a one-time code to an email address or a phone (one sender per channel)."""

    async def send(self, target: str, code: str, purpose: str) -> None: ...


@dataclass(frozen=True)
class CodeSenders:
    email: CodeSender
    sms: CodeSender


class CaptchaRenderer(Protocol):
    """Code → PNG bytes. CPU-bound and synchronous: callers run it in a thread."""

    def render(self, code: str) -> bytes: ...


# ---------------------------------------------------------------------------------------------------
# Pure helpers


def _mask(captcha_type: str, target: str) -> str:
    return mask_email(target) if captcha_type == EMAIL else mask_phone(target)


# ---------------------------------------------------------------------------------------------------
# Use case


class CaptchaUsecase:
    """Issues captchas and one-time codes, checks them, and consumes them exactly once."""

    def __init__(
        self,
        settings: CaptchaSettings,
        store: CaptchaStore,
        renderer: CaptchaRenderer,
        senders: CodeSenders,
        limiter: RateLimiter,
        code_key: bytes,
    ) -> None:
        if len(code_key) < _MIN_CODE_KEY_BYTES:
            raise ValueError("captcha code_key must be at least 16 bytes")
        self._settings = settings
        self._store = store
        self._renderer = renderer
        self._senders = senders
        self._limiter = limiter
        self._key = code_key

    @property
    def enabled(self) -> bool:
        """Whether login/registration must present a captcha (``auth.captcha_enabled``)."""
        return self._settings.enabled

    async def issue(self, captcha_type: str, target: str, client_addr: str) -> CaptchaChallenge:
        """Create a captcha: render it (image) or send the code to ``target`` (sms, email).

        Raises InvalidArgument(VALIDATION_ERROR) for a bad type or target, ResourceExhausted
        (RATE_LIMITED, ``retry_after`` seconds in metadata) when throttled, Unavailable when the
        store or the sender is down.
        """
        if captcha_type not in CAPTCHA_TYPES:
            raise InvalidArgument("VALIDATION_ERROR", "captcha_type must be one of: image, sms, email")
        client = client_network(client_addr)  # per IPv4 /24 or IPv6 /64, not per address
        if captcha_type == IMAGE:
            await self._throttle(f"captcha:image:client:{client}", self._settings.image_limit_per_client)
            return await self._issue_image()
        kind = identifiers.EMAIL if captcha_type == EMAIL else identifiers.PHONE
        normalized = identifiers.normalize_identifier(kind, target)
        await self._throttle(f"captcha:send:client:{client}", self._settings.send_limit_per_client)
        await self._throttle(
            f"captcha:send:target:{self._target_digest(normalized)}", self._settings.send_limit_per_target
        )
        return await self._issue_code(captcha_type, normalized)

    async def verify(self, captcha_id: str, code: str) -> bool:
        """True when ``code`` is right for ``captcha_id``; does not consume it.

        A wrong code counts an attempt; after ``max_attempts`` the captcha is gone. Unknown or expired
        ids and empty input give False: a client mistake is never an exception.
        """
        code = code.strip()
        if not code or not self._plausible_id(captcha_id):
            return False
        result = await self._store.check(captcha_id, self._code_hash(captcha_id, code), self._settings.max_attempts)
        return result is CaptchaCheck.OK

    async def consume(
        self, captcha_id: str, code: str, allowed_targets: Collection[str] = (), *, require_target: bool = False
    ) -> None:
        """Accept the captcha once, atomically across replicas, or raise InvalidArgument.

        ``allowed_targets``: the email and/or phone the caller registers or logs in with; an sms/email
        code is accepted only if it was sent to one of them. Image captchas ignore targets, unless
        ``require_target``: then only a code sent to one of the targets passes (proof of ownership).
        Reasons: CAPTCHA_REQUIRED (no id or code), CAPTCHA_EXPIRED (unknown or expired id),
        CAPTCHA_INVALID (wrong code, attempts used up, or another target).
        """
        code = code.strip()
        if not captcha_id or not code:
            raise InvalidArgument("CAPTCHA_REQUIRED", "captcha_id and captcha_code are required")
        if not self._plausible_id(captcha_id):
            raise InvalidArgument("CAPTCHA_EXPIRED", "the captcha has expired; request a new one")
        digests = {self._target_digest(t) for t in self._normalize_targets(allowed_targets)}
        result = await self._store.consume(
            captcha_id, self._code_hash(captcha_id, code), digests, self._settings.max_attempts, require_target
        )
        if result is CaptchaCheck.OK:
            return
        if result is CaptchaCheck.UNKNOWN:
            raise InvalidArgument("CAPTCHA_EXPIRED", "the captcha has expired; request a new one")
        raise InvalidArgument("CAPTCHA_INVALID", "the captcha code is not valid")

    async def _issue_image(self) -> CaptchaChallenge:
        code = self._new_code()
        png = await asyncio.to_thread(self._renderer.render, code)
        captcha_id = await self._save(IMAGE, code, "")
        return CaptchaChallenge(captcha_id=captcha_id, image_png=png)

    async def _issue_code(self, captcha_type: str, target: str) -> CaptchaChallenge:
        code = self._new_code()
        captcha_id = await self._save(captcha_type, code, self._target_digest(target))
        sender = self._senders.email if captcha_type == EMAIL else self._senders.sms
        try:
            await sender.send(target, code, PURPOSE_VERIFICATION)
        except Exception:
            # Nobody received this code: do not leave a live captcha behind.
            await self._delete_quietly(captcha_id)
            raise
        log.info("captcha code sent", extra={"captcha_type": captcha_type, "target": _mask(captcha_type, target)})
        return CaptchaChallenge(captcha_id=captcha_id, image_png=None)

    async def _save(self, captcha_type: str, code: str, target_digest: str) -> str:
        captcha_id = secrets.token_urlsafe(_ID_BYTES)
        record = CaptchaRecord(
            code_hash=self._code_hash(captcha_id, code), captcha_type=captcha_type, target=target_digest
        )
        await self._store.save(captcha_id, record, self._settings.expiration)
        return captcha_id

    async def _delete_quietly(self, captcha_id: str) -> None:
        try:
            await self._store.delete(captcha_id)
        except Exception:  # the send failure is the error to report; the captcha expires anyway
            log.warning("could not delete an undelivered captcha", exc_info=False)

    async def _throttle(self, bucket: str, limit: int) -> None:
        decision = await self._limiter.hit(bucket, limit, self._settings.send_window.total_seconds())
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after))
            raise ResourceExhausted(
                "RATE_LIMITED", "too many captcha requests; try again later", {"retry_after": str(retry_after)}
            )

    def _new_code(self) -> str:
        return "".join(secrets.choice(string.digits) for _ in range(self._settings.length))

    def _code_hash(self, captcha_id: str, code: str) -> str:
        message = f"code\x00{captcha_id}\x00{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _target_digest(self, normalized_target: str) -> str:
        message = f"target\x00{normalized_target}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    @staticmethod
    def _plausible_id(captcha_id: str) -> bool:
        # Anything we did not issue is simply unknown; this also keeps odd bytes out of Redis keys.
        return bool(_ID_PATTERN.fullmatch(captcha_id))

    @staticmethod
    def _normalize_targets(targets: Collection[str]) -> list[str]:
        # A malformed target cannot match any code we sent, and a username is no address.
        classified = (identifiers.classify(target) for target in targets if target and target.strip())
        return [value for kind, value in classified if value is not None and kind != identifiers.USERNAME]
