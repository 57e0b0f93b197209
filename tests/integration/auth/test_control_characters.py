"""Every string field of every auth.v1 RPC, driven with NUL and other control characters through a real
gRPC server over real PostgreSQL and Redis: a documented status with an ErrorInfo, never INTERNAL/UNKNOWN.

PostgreSQL cannot store U+0000 in text or jsonb (asyncpg raises UntranslatableCharacterError), so a NUL that
slipped past validation into a query, an audit row or a Redis key would surface here as INTERNAL.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from internal.biz.auth import LoginAttempt, Registration
from internal.biz.captcha import CaptchaSettings
from internal.biz.credentials import TOKEN_PREFIX, CredentialUsecase, token_hash
from internal.conf.config import GRPC
from internal.data.credentials import PgCredentialRepo
from internal.server.grpc import ServiceRegistration, new_grpc_server
from internal.service.auth import AuthService
from tests.integration.auth.conftest import build_accounts, build_stack, unique
from tests.integration.helpers import CaptchaEnv

PASSWORD = "s3cretpass"
SERVICE = auth_pb2.DESCRIPTOR.services_by_name["Auth"]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
HOSTILE = [
    "\x00",
    "a\x00b",
    "alice\x00",
    "\x00alice@example.com",
    "+86\x0013812345678",
    "\x1b[2J\x07",
    "line\r\nbreak",
    "\x7f\x08\x0c",
    "\u202eevil\u200b",
    "\x00" * 300,
]
# Plausible values for the other fields, so the hostile one is what the server has to deal with.
PLAUSIBLE = {
    "captcha_type": "email",
    "target": "someone@example.com",
    "code": "123456",
    "totp_code": "123456",
    "captcha_code": "123456",
    "phone_captcha_code": "123456",
    "captcha_id": "c" * 32,
    "phone_captcha_id": "p" * 32,
    "phone": "+8613812345678",
}
STRING = FieldDescriptor.TYPE_STRING


def string_fields() -> list[tuple[str, str]]:
    return [
        (method.name, field.name)
        for method in SERVICE.methods
        for field in method.input_type.fields
        if field.type == STRING
    ]


class Target:
    """The server's address and the credentials a call may carry."""

    def __init__(self, address: str, username: str, access: str, refresh: str, introspector: str) -> None:
        self.address = address
        self.username = username
        self.access = access
        self.refresh = refresh
        self.introspector = introspector

    def request(self, method: str, field: str, value: str) -> Any:
        descriptor = SERVICE.methods_by_name[method].input_type
        values = {f.name: self._plausible(f.name) for f in descriptor.fields if f.type == STRING}
        values[field] = value
        return getattr(auth_pb2, descriptor.name)(**values)

    def _plausible(self, name: str) -> str:
        fresh = {"username": unique(), "password": PASSWORD, "email": f"{unique()}@example.com"}
        tokens = {"token": self.access, "refresh_token": self.refresh}
        return PLAUSIBLE.get(name) or fresh.get(name) or tokens.get(name, "")

    def metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        token = self.introspector if method == "IntrospectToken" else self.access
        return (("authorization", f"Bearer {token}"),)


def check(stub: auth_pb2_grpc.AuthStub, target: Target, method: str, field: str, value: str) -> None:
    call = getattr(stub, method)
    try:
        call(target.request(method, field, value), metadata=target.metadata(method), timeout=20)
    except grpc.RpcError as err:
        code = err.code()
        assert code not in NEVER, f"{method}.{field}={value!r}: {code.name} {err.details()}"
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None and len(status.details) == 1, f"{method}.{field}: no ErrorInfo"
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        assert info.reason and info.domain == "authkms", f"{method}.{field}: {info}"


@pytest.fixture
async def target(pg_pool: asyncpg.Pool, redis_client: Any, redis_prefix: str) -> AsyncIterator[Target]:
    captchas = CaptchaEnv(redis_client, redis_prefix, CaptchaSettings(image_limit_per_client=100_000))
    stack = build_stack(pg_pool, redis_client, redis_prefix, captcha=captchas.usecase, free_attempts=10_000)
    credentials = CredentialUsecase(PgCredentialRepo(pg_pool), stack.audit)
    accounts, _ = build_accounts(stack, captcha=captchas.usecase)
    service = AuthService(stack.auth, stack.tokens, stack.totp, stack.profiles, captchas.usecase, credentials, accounts)
    server, port = new_grpc_server(
        GRPC(addr="127.0.0.1:0"),
        [ServiceRegistration("auth.v1.Auth", lambda s: auth_pb2_grpc.add_AuthServicer_to_server(service, s))],
        health.aio.HealthServicer(),
    )
    await server.start()
    try:
        username = unique()
        setup = build_stack(pg_pool, redis_client, redis_prefix, cipher=stack.cipher)
        await setup.auth.register(Registration(username, PASSWORD, f"{username}@example.com"))
        pair = await setup.auth.login(LoginAttempt(username, PASSWORD))
        introspector = TOKEN_PREFIX + secrets.token_urlsafe(32)
        repo = PgCredentialRepo(pg_pool)
        await repo.create(unique("svc"), token_hash(introspector), ["auth.introspect"], ["default"])
        yield Target(f"127.0.0.1:{port}", username, pair.access_token, pair.refresh_token, introspector)
    finally:
        await server.stop(None)


@pytest.fixture
def sync_stub(target: Target) -> Iterator[auth_pb2_grpc.AuthStub]:
    with grpc.insecure_channel(target.address) as channel:
        yield auth_pb2_grpc.AuthStub(channel)


def test_every_rpc_has_string_fields_covered() -> None:
    methods = {method for method, _ in string_fields()}
    with_strings = {m.name for m in SERVICE.methods if any(f.type == STRING for f in m.input_type.fields)}
    assert methods == with_strings and len(methods) >= 10


async def test_nul_and_control_characters_in_every_string_field(target: Target, sync_stub: Any) -> None:
    def run() -> None:
        for method, field in string_fields():
            for value in HOSTILE:
                check(sync_stub, target, method, field, value)

    # A synchronous client in a thread: the in-process server runs on this test's event loop.
    await asyncio.to_thread(run)


CONTROL = st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp"])
TEXT = st.text(st.one_of(CONTROL, st.sampled_from(string.ascii_letters + string.digits + "@+._-")), max_size=80)


async def test_property_control_characters_anywhere(target: Target, sync_stub: Any) -> None:
    fields = string_fields()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(fields), TEXT)
    def property_(field: tuple[str, str], value: str) -> None:
        check(sync_stub, target, field[0], field[1], value)

    await asyncio.to_thread(property_)
