"""Delivery of one-time codes: SMTP email, an HTTP webhook for SMS, and a development outbox.

Failures surface as ``Unavailable(SERVICE_UNAVAILABLE)`` with a generic message. Neither messages nor
logs carry the code; logs name the target only masked (``j***@example.com``), and the underlying
exception only by its type, since e.g. ``SMTPRecipientsRefused`` quotes the address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from datetime import timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from internal.biz.captcha import CodeSender, CodeSenders
from internal.biz.errors import Unavailable
from internal.biz.masking import mask_email, mask_phone
from internal.conf.config import Bootstrap, ConfigError, SmsWebhook, Smtp
from internal.data.ratelimit import redis_unavailable

log = logging.getLogger(__name__)

DEV_OUTBOX_KEEP = 10  # codes kept per target, newest first


def _message_text(code: str, purpose: str, valid_for: timedelta) -> str:
    if not code:  # a notice (e.g. an address changed), not a code
        return f"Notice: {purpose}. If this was not you, reset your password."
    minutes = max(1, round(valid_for.total_seconds() / 60))
    return f"Your {purpose} code is {code}. It expires in {minutes} minutes. Do not share it."


class SmtpEmailSender:
    """Sends the code by email: implicit TLS on port 465, else STARTTLS when configured; login if set."""

    def __init__(self, conf: Smtp, valid_for: timedelta) -> None:
        self._conf = conf
        self._valid_for = valid_for

    async def send(self, target: str, code: str, purpose: str) -> None:
        message = EmailMessage()
        message["From"] = self._conf.from_addr
        message["To"] = target
        message["Subject"] = f"Your {purpose} code" if code else "Account notice"
        message.set_content(_message_text(code, purpose, self._valid_for))
        try:
            await asyncio.to_thread(self._deliver, message)
        except (smtplib.SMTPException, OSError) as exc:
            log.warning("email delivery failed", extra={"target": mask_email(target), "error": type(exc).__name__})
            raise Unavailable("SERVICE_UNAVAILABLE", "email delivery failed; try again later") from None

    def _deliver(self, message: EmailMessage) -> None:
        conf = self._conf
        timeout = conf.timeout.total_seconds()
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if conf.port == 465:
            smtp = smtplib.SMTP_SSL(conf.host, conf.port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(conf.host, conf.port, timeout=timeout)
        with smtp:
            if conf.starttls and conf.port != 465:
                smtp.starttls(context=context)
            if conf.username:
                smtp.login(conf.username, conf.password)
            smtp.send_message(message)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be replayed as a GET without its body (and maybe to another host).
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSmsSender:
    """POSTs ``{"to": phone, "message": text}`` as JSON to an SMS gateway webhook; non-2xx fails."""

    def __init__(self, conf: SmsWebhook, valid_for: timedelta) -> None:
        if urlsplit(conf.url).scheme not in ("http", "https"):
            raise ConfigError("auth.sms_webhook.url: expected an http:// or https:// URL")
        self._conf = conf
        self._valid_for = valid_for
        self._opener = urllib.request.build_opener(_NoRedirects)

    async def send(self, target: str, code: str, purpose: str) -> None:
        body = json.dumps({"to": target, "message": _message_text(code, purpose, self._valid_for)}).encode()
        headers = {"Content-Type": "application/json"}
        if self._conf.bearer_token:
            headers["Authorization"] = f"Bearer {self._conf.bearer_token}"
        request = urllib.request.Request(self._conf.url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            status = await asyncio.to_thread(self._post, request)
        except (urllib.error.URLError, OSError) as exc:
            status, error = None, type(exc).__name__
        else:
            error = f"HTTP {status}"
        if status is not None and 200 <= status < 300:
            return
        log.warning("sms delivery failed", extra={"target": mask_phone(target), "error": error})
        raise Unavailable("SERVICE_UNAVAILABLE", "sms delivery failed; try again later")

    def _post(self, request: urllib.request.Request) -> int:
        try:
            with self._opener.open(request, timeout=self._conf.timeout.total_seconds()) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:  # 3xx (redirects refused), 4xx, 5xx
            exc.close()
            return int(exc.code)


class DevOutboxSender:
    """Development only: keeps the last codes per target in Redis instead of sending them.

    ``{prefix}dev-outbox:{target}`` is a list, newest first (``LINDEX key 0``), expiring with the
    captcha, so developers and e2e tests can read the code. Refuses to exist in production mode.
    """

    def __init__(self, redis: Any, key_prefix: str, valid_for: timedelta, *, security_mode: str) -> None:
        if security_mode == "production":
            raise ConfigError("auth.dev_outbox: the development outbox is refused in production mode")
        self._redis = redis
        self._prefix = key_prefix
        self._ttl_ms = max(1, int(valid_for.total_seconds() * 1000))

    def key(self, target: str) -> str:
        return f"{self._prefix}dev-outbox:{target}"

    async def send(self, target: str, code: str, purpose: str) -> None:
        key = self.key(target)
        with redis_unavailable("the development outbox"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, code or f"notice: {purpose}")
                pipe.ltrim(key, 0, DEV_OUTBOX_KEEP - 1)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

    async def codes(self, target: str) -> list[str]:
        """The kept codes for ``target``, newest first."""
        with redis_unavailable("the development outbox"):
            raw = await self._redis.lrange(self.key(target), 0, -1)
        return [c.decode() if isinstance(c, bytes) else c for c in raw]


class UnconfiguredSender:
    """Stands in for a channel with no delivery configured: every send fails as unavailable."""

    def __init__(self, channel: str) -> None:
        self._channel = channel

    async def send(self, target: str, code: str, purpose: str) -> None:
        raise Unavailable(
            "SERVICE_UNAVAILABLE",
            f"{self._channel} codes cannot be sent: no {self._channel} delivery is configured",
        )


def build_senders(config: Bootstrap, redis: Any, key_prefix: str) -> CodeSenders:
    """Email: SMTP if ``auth.smtp.host``; SMS: webhook if ``auth.sms_webhook.url``; otherwise the dev
    outbox when ``auth.dev_outbox`` (never in production), otherwise a sender that reports
    SERVICE_UNAVAILABLE."""
    auth = config.auth
    valid_for = auth.captcha.expiration
    email: CodeSender | None = SmtpEmailSender(auth.smtp, valid_for) if auth.smtp.host else None
    sms: CodeSender | None = WebhookSmsSender(auth.sms_webhook, valid_for) if auth.sms_webhook.url else None
    if (email is None or sms is None) and auth.dev_outbox:
        outbox = DevOutboxSender(redis, key_prefix, valid_for, security_mode=config.security.mode)
        email, sms = email or outbox, sms or outbox
    return CodeSenders(email=email or UnconfiguredSender("email"), sms=sms or UnconfiguredSender("sms"))
