"""A plain HTTP/1.1 client for the HTTP/JSON API (the standard library's http.client: no transcoding of its own),
plus the raw-socket helpers the limit tests need and the development outbox's captcha codes."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
LIMITS = {
    "APP__AUTH__LOGIN_RATE_LIMIT": "1000",
    "APP__AUTH__CAPTCHA__SEND_LIMIT_PER_CLIENT": "1000",
    "APP__AUTH__CAPTCHA__SEND_LIMIT_PER_TARGET": "100",
}


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith(JSON), self.headers
        return json.loads(self.body)

    def error(self) -> tuple[int, str]:
        """(HTTP status, reason) of a Kratos error body; checks the body has exactly Kratos' four fields."""
        body = self.json()
        assert set(body) == {"code", "reason", "message", "metadata"}, body
        assert body["code"] == self.status and isinstance(body["message"], str), body
        return self.status, body["reason"]


class Api:
    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = "",
        raw: bytes | None = None,
        content_type: str = JSON,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is not None:
            sent.setdefault("Content-Type", content_type)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=payload, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        reply = self.call(method, path, body, **kwargs)
        assert reply.status == 200, (method, path, reply.status, reply.body[:300])
        return reply.json()

    def fails(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, str]:
        return self.call(method, path, body, **kwargs).error()


def raw_exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes as they are and return what the server answers before it closes or ``wait`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def status_line(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:100]
    return int(answer.split(b" ", 2)[1])


class Outbox:
    """The development outbox in Redis: where a test reads the captcha codes the server 'sent'."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self._prefix = prefix

    def code(self, target: str) -> str:
        code = self._redis.lindex(f"{self._prefix}dev-outbox:{target}", 0)
        assert code is not None, "no code in the dev outbox"
        return str(code)

    def close(self) -> None:
        self._redis.close()


def email_captcha(api: Api, outbox: Outbox, email: str) -> dict[str, str]:
    """A fresh email captcha for ``email`` with its code, in the JSON names a client sends."""
    captcha = api.ok("GET", f"/api/v1/auth/captcha?captcha_type=email&target={email}")
    return {"captchaId": captcha["captchaId"], "captchaCode": outbox.code(email)}


def phone_captcha(api: Api, outbox: Outbox, phone: str) -> dict[str, str]:
    """A fresh sms code for ``phone``, as Register's proof of the phone (``phoneCaptchaId``/``phoneCaptchaCode``)."""
    captcha = api.ok("GET", f"/api/v1/auth/captcha?captcha_type=sms&target={quote(phone)}")
    return {"phoneCaptchaId": captcha["captchaId"], "phoneCaptchaCode": outbox.code(phone)}
