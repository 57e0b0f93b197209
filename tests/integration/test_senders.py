"""Code senders against real local servers: aiosmtpd for email, http.server for the SMS webhook."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

from internal.biz.errors import Unavailable
from internal.conf.config import Auth, Bootstrap, ConfigError, Security, SmsWebhook, Smtp
from internal.data.senders import (
    DevOutboxSender,
    SmtpEmailSender,
    UnconfiguredSender,
    WebhookSmsSender,
    build_senders,
)

VALID_FOR = timedelta(minutes=5)
PHONE = "+8613812345678"
CODE = "493817"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- SMTP ------------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    messages: list[tuple[Envelope, Message]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append((envelope, message_from_bytes(content)))
        return "250 OK"


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield SmtpServer(port, mailbox)
    finally:
        controller.stop()


def smtp_conf(port: int, **overrides: Any) -> Smtp:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "from_addr": "no-reply@authkms.test",
        "timeout": timedelta(seconds=2),
    }
    values.update(overrides)
    return Smtp(**values)


async def test_smtp_delivers_code_to_address(smtp_server: SmtpServer) -> None:
    sender = SmtpEmailSender(smtp_conf(smtp_server.port), VALID_FOR)
    await sender.send("jane@example.com", CODE, "verification")
    [(envelope, message)] = smtp_server.mailbox.messages
    assert envelope.rcpt_tos == ["jane@example.com"]
    assert envelope.mail_from == "no-reply@authkms.test"
    assert message["To"] == "jane@example.com"
    assert CODE not in message["Subject"]
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes) and CODE.encode() in body and b"5 minutes" in body


async def test_smtp_login_when_username_set(smtp_server: SmtpServer) -> None:
    good = SmtpEmailSender(smtp_conf(smtp_server.port, username="mailer", password="s3cret"), VALID_FOR)
    await good.send("jane@example.com", CODE, "verification")
    assert len(smtp_server.mailbox.messages) == 1
    bad = SmtpEmailSender(smtp_conf(smtp_server.port, username="mailer", password="wrong"), VALID_FOR)
    with pytest.raises(Unavailable):
        await bad.send("jane@example.com", CODE, "verification")
    assert len(smtp_server.mailbox.messages) == 1


async def test_smtp_starttls_required_but_not_offered_fails(smtp_server: SmtpServer) -> None:
    # Never fall back to plaintext when STARTTLS is configured.
    sender = SmtpEmailSender(smtp_conf(smtp_server.port, starttls=True), VALID_FOR)
    with pytest.raises(Unavailable):
        await sender.send("jane@example.com", CODE, "verification")
    assert smtp_server.mailbox.messages == []


async def test_smtp_down_is_unavailable_and_logs_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    sender = SmtpEmailSender(smtp_conf(free_port()), VALID_FOR)
    with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as err:
        await sender.send("jane@example.com", CODE, "verification")
    assert err.value.reason == "SERVICE_UNAVAILABLE"
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert_no_secrets(caplog, err.value, "jane@example.com", "j***@example.com")


def assert_no_secrets(caplog: pytest.LogCaptureFixture, error: Exception, target: str, masked: str) -> None:
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records) + f" {error} {error!r}"
    assert CODE not in text and target not in text
    assert masked in text


# --- SMS webhook -----------------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    requests: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    state = Gateway(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.requests.append((dict(self.headers.items()), json.loads(self.rfile.read(length))))
            self.send_response(state.status)
            if 300 <= state.status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/sms"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def webhook(url: str, token: str = "") -> WebhookSmsSender:
    return WebhookSmsSender(SmsWebhook(url=url, bearer_token=token, timeout=timedelta(seconds=2)), VALID_FOR)


async def test_webhook_posts_json_with_bearer(gateway: Gateway) -> None:
    await webhook(gateway.url, "gw-token").send(PHONE, CODE, "verification")
    [(headers, body)] = gateway.requests
    assert headers["Authorization"] == "Bearer gw-token"
    assert headers["Content-Type"] == "application/json"
    assert body["to"] == PHONE and CODE in body["message"]


async def test_webhook_without_token_sends_no_authorization(gateway: Gateway) -> None:
    await webhook(gateway.url).send(PHONE, CODE, "verification")
    assert "Authorization" not in gateway.requests[0][0]


@pytest.mark.parametrize("status", [500, 401, 302])
async def test_webhook_non_2xx_is_unavailable(gateway: Gateway, status: int, caplog: pytest.LogCaptureFixture) -> None:
    gateway.status = status
    with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as err:
        await webhook(gateway.url, "gw-token").send(PHONE, CODE, "verification")
    assert err.value.reason == "SERVICE_UNAVAILABLE"
    assert len(gateway.requests) == 1  # a redirect is not followed
    assert_no_secrets(caplog, err.value, PHONE, "+86138****5678")


async def test_webhook_unreachable_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        await webhook(f"http://127.0.0.1:{free_port()}/sms").send(PHONE, CODE, "verification")


def test_webhook_rejects_non_http_url() -> None:
    with pytest.raises(ConfigError):
        webhook("file:///etc/passwd")


# --- dev outbox and selection ----------------------------------------------------------------------


def test_dev_outbox_refused_in_production(redis_client: aioredis.Redis) -> None:
    with pytest.raises(ConfigError):
        DevOutboxSender(redis_client, "p:", VALID_FOR, security_mode="production")


async def test_dev_outbox_keeps_recent_codes(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    outbox = DevOutboxSender(redis_client, redis_prefix, VALID_FOR, security_mode="development")
    for i in range(12):
        await outbox.send(PHONE, f"{i:06d}", "verification")
    codes = await outbox.codes(PHONE)
    assert codes[0] == "000011" and len(codes) == 10
    assert await redis_client.lindex(f"{redis_prefix}dev-outbox:{PHONE}", 0) == b"000011"
    assert 0 < await redis_client.pttl(outbox.key(PHONE)) <= 300_000


def test_build_senders_selection(redis_client: aioredis.Redis) -> None:
    smtp = Smtp(host="mail.internal")
    hook = SmsWebhook(url="https://sms.internal/send")
    both = build_senders(Bootstrap(auth=Auth(smtp=smtp, sms_webhook=hook)), redis_client, "p:")
    assert isinstance(both.email, SmtpEmailSender) and isinstance(both.sms, WebhookSmsSender)

    dev = build_senders(Bootstrap(auth=Auth(dev_outbox=True, smtp=smtp)), redis_client, "p:")
    assert isinstance(dev.email, SmtpEmailSender) and isinstance(dev.sms, DevOutboxSender)

    none = build_senders(Bootstrap(), redis_client, "p:")
    assert isinstance(none.email, UnconfiguredSender) and isinstance(none.sms, UnconfiguredSender)

    prod = Bootstrap.model_construct(
        auth=Auth(dev_outbox=True), security=Security(mode="production"), kms=Bootstrap().kms
    )
    with pytest.raises(ConfigError):
        build_senders(prod, redis_client, "p:")


async def test_unconfigured_sender_is_unavailable() -> None:
    with pytest.raises(Unavailable) as err:
        await UnconfiguredSender("sms").send(PHONE, CODE, "verification")
    assert err.value.reason == "SERVICE_UNAVAILABLE"
    assert "no sms delivery is configured" in err.value.message
    assert CODE not in err.value.message and PHONE not in err.value.message
