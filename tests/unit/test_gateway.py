"""HTTP transcoding: the route table read off the descriptors, request decoding, codecs, Kratos' error mapping."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import json_format

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz.errors import PermissionDenied
from internal.server.gateway import (
    HTTP_STATUS,
    JSON_CODEC,
    Codec,
    HttpCallContext,
    Invoker,
    Route,
    _router_path,
    decode,
    encode_reply,
    reply_codec,
    routes,
)
from internal.server.grpc import ServiceRegistration, server_interceptors
from internal.server.interceptors import AccessLogInterceptor, ErrorInterceptor, Undecodable
from internal.server.peer import TrustedProxies
from internal.service.metadata import client_address
from internal.service.wire import encode_encrypt_batch

AUTH = auth_pb2.DESCRIPTOR.services_by_name["Auth"]
KMS = kms_pb2.DESCRIPTOR.services_by_name["KMS"]


def registrations(servicer: Any = None) -> list[ServiceRegistration]:
    return [
        ServiceRegistration("auth.v1.Auth", lambda s: None, AUTH, servicer),
        ServiceRegistration("kms.v1.KMS", lambda s: None, KMS, kms_pb2_grpc.KMSServicer()),
        ServiceRegistration("grpc.only.Service", lambda s: None),  # no descriptor: not served over HTTP
    ]


def table() -> dict[str, Route]:
    return {route.method.name: route for route in routes(registrations())}


def test_every_annotated_method_gets_its_route() -> None:
    annotated = {m.name for s in (AUTH, KMS) for m in s.methods if m.GetOptions().HasExtension(annotations_pb2.http)}
    assert set(table()) == annotated and len(annotated) == len(AUTH.methods) + len(KMS.methods)
    login, lock, version = table()["Login"], table()["LockStatus"], table()["GetDataKey"]
    assert (login.verb, login.path, login.body, login.grpc_method) == (
        "POST",
        "/api/v1/auth/login",
        "*",
        "/auth.v1.Auth/Login",
    )
    assert (lock.verb, lock.path, dict(lock.variables), lock.body) == (
        "GET",
        "/api/v1/auth/lock-status/{v0}",
        {"v0": "username"},
        "",
    )
    assert version.path == "/api/v1/kms/keys/{v0}" and version.input is kms_pb2.GetDataKeyRequest
    order = [route.template for route in routes(registrations())]
    assert order.index("/api/v1/kms/keys/active") < order.index("/api/v1/kms/keys/{version}")


@pytest.mark.parametrize(
    ("template", "path", "variables"),
    [
        ("/v1/things/{id}", "/v1/things/{v0}", {"v0": "id"}),
        ("/v1/{name=keys/*}:rotate", "/v1/{v0:keys/[^/]+}:rotate", {"v0": "name"}),
        ("/v1/{key.name}/versions/{version=*}", "/v1/{v0}/versions/{v1}", {"v0": "key.name", "v1": "version"}),
        ("/v1/files/{path=**}", "/v1/files/{v0:.+}", {"v0": "path"}),
    ],
)
def test_path_templates_become_router_paths(template: str, path: str, variables: dict[str, str]) -> None:
    assert _router_path(template) == (path, variables)


def test_bodies_accept_json_and_proto_names_and_ignore_unknown_fields() -> None:
    route = table()["Login"]
    body = json.dumps({"username": "a", "captcha_id": "c", "captchaCode": "d", "totpCode": "1", "extra": [1]})
    message = decode(route, body.encode(), "application/json; charset=utf-8", [], {})
    assert message == auth_pb2.LoginRequest(username="a", captcha_id="c", captcha_code="d", totp_code="1")
    assert decode(route, b"", "", [], {}) == auth_pb2.LoginRequest()
    wire = auth_pb2.LoginRequest(username="p").SerializeToString()
    assert decode(route, wire, "application/x-protobuf", [], {}) == auth_pb2.LoginRequest(username="p")
    form = decode(route, b"username=f&captchaId=g", "application/x-www-form-urlencoded", [], {})
    assert form == auth_pb2.LoginRequest(username="f", captcha_id="g")


def test_query_parameters_and_path_variables() -> None:
    listing = decode(table()["ListDataKeys"], b"", "", [("pageSize", "5"), ("status", "active"), ("x", "1")], {})
    assert listing == kms_pb2.ListDataKeysRequest(page_size=5, status="active")
    lock = decode(table()["LockStatus"], b"", "", [("username", "mallory")], {"v0": "alice"})
    assert lock == auth_pb2.LockStatusRequest(username="alice")  # the path wins over the query
    maintenance = decode(
        table()["PerformMaintenance"], b'{"batchSize": 3}', "application/json", [("dry_run", "true")], {}
    )
    assert maintenance == kms_pb2.PerformMaintenanceRequest(batch_size=3, dry_run=True)


@pytest.mark.parametrize(
    ("method", "raw", "content_type", "query", "path"),
    [
        ("Login", b"{oops", "application/json", [], {}),
        ("Login", b'"a string"', "application/json", [], {}),
        ("Login", b'{"username": 7}', "application/json", [], {}),
        ("Login", b"\x0a\xff", "application/x-protobuf", [], {}),
        ("Login", b"username=a", "text/plain", [], {}),
        ("Encrypt", b'{"plaintext": 5}', "application/json", [], {}),
        ("GetDataKey", b"", "", [], {"v0": "active"}),
        ("ListDataKeys", b"", "", [("pageSize", "1e99")], {}),
        ("PerformMaintenance", b"", "", [("dryRun", "maybe")], {}),
    ],
)
def test_undecodable_requests(method: str, raw: bytes, content_type: str, query: Any, path: Any) -> None:
    assert isinstance(decode(table()[method], raw, content_type, query, path), Undecodable)


@pytest.mark.parametrize(
    ("accept", "codec"),
    [
        ("", JSON_CODEC),
        ("application/json", JSON_CODEC),
        ("text/html, application/x-protobuf;q=0.9", Codec("application/x-protobuf", True)),
        ("application/proto", Codec("application/proto", True)),
        ("*/*", JSON_CODEC),
    ],
)
def test_reply_codec_negotiation(accept: str, codec: Codec) -> None:
    assert reply_codec(accept) == codec


def test_replies_emit_unpopulated_fields_in_lower_camel_case() -> None:
    reply = auth_pb2.LoginReply(access_token="t")
    assert json.loads(encode_reply(table()["Login"], reply, JSON_CODEC)) == {
        "accessToken": "t",
        "refreshToken": "",
        "expiresIn": "0",
    }
    batch = kms_pb2.EncryptBatchReply(algorithm="A", results=[kms_pb2.EncryptResult(ciphertext=b"c", key_version=3)])
    route = table()["EncryptBatch"]
    assert encode_reply(route, batch, Codec("application/x-protobuf", True)) == batch.SerializeToString()
    expected = json_format.MessageToDict(batch, always_print_fields_with_no_presence=True)
    expected["results"][0]["status"] = None  # unset message fields are null, as Go's protojson writes them
    assert json.loads(encode_reply(route, batch, JSON_CODEC)) == expected
    assert json.loads(encode_reply(table()["GetDataKey"], kms_pb2.GetDataKeyReply(), JSON_CODEC)) == {"key": None}


def test_http_status_is_kratos_mapping_of_every_grpc_code() -> None:
    kratos = {
        "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
        "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    }  # fmt: skip
    assert {code.name: status for code, status in HTTP_STATUS.items()} == kratos
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


class _Servicer(auth_pb2_grpc.AuthServicer):
    """Stands in for a servicer: Logout refuses, GetJwks answers, Login crashes, Register echoes the client."""

    async def Logout(self, request: Any, context: Any) -> Any:
        raise PermissionDenied("ACCOUNT_LOCKED", "locked", {"unlock_time": "99"})

    async def GetJwks(self, request: Any, context: Any) -> Any:
        return auth_pb2.GetJwksReply(jwks_json='{"keys":[]}')

    async def Login(self, request: Any, context: Any) -> Any:
        raise RuntimeError("a bug with a secret in it: hunter2")

    async def Register(self, request: Any, context: Any) -> Any:
        return auth_pb2.RegisterReply(message=client_address(context))


async def test_calls_run_through_the_interceptors_into_the_servicer() -> None:
    route_table = routes(registrations(_Servicer()))
    invoker = Invoker([AccessLogInterceptor(TrustedProxies(["127.0.0.0/8"])), ErrorInterceptor()], route_table)

    def context(*metadata: tuple[str, str]) -> HttpCallContext:
        return HttpCallContext("ipv4:127.0.0.1:5000", tuple(metadata))

    ok = context()
    assert await invoker.call("/auth.v1.Auth/GetJwks", auth_pb2.GetJwksRequest(), ok) is not None
    assert ok.error() is None

    refused = context()
    assert await invoker.call("/auth.v1.Auth/Logout", auth_pb2.LogoutRequest(), refused) is None
    error = refused.error()
    assert error is not None
    assert (error.code, error.reason, error.message, dict(error.metadata)) == (
        403,
        "ACCOUNT_LOCKED",
        "locked",
        {"unlock_time": "99"},
    )

    crashed = context()
    assert await invoker.call("/auth.v1.Auth/Login", auth_pb2.LoginRequest(), crashed) is None
    error = crashed.error()
    assert error is not None and (error.code, error.reason, error.message) == (500, "INTERNAL_ERROR", "internal error")

    undecodable = context()
    assert await invoker.call("/auth.v1.Auth/GetJwks", Undecodable(), undecodable) is None
    error = undecodable.error()
    assert error is not None and (error.code, error.reason) == (400, "VALIDATION_ERROR")

    forwarded = context(("x-forwarded-for", "198.51.100.4"))
    reply = await invoker.call("/auth.v1.Auth/Register", auth_pb2.RegisterRequest(), forwarded)
    assert reply.message == "198.51.100.4"


class _BatchServicer(kms_pb2_grpc.KMSServicer):
    async def EncryptBatch(self, request: Any, context: Any) -> Any:
        return encode_encrypt_batch([b"sealed", PermissionDenied("KEY_DENIED", "no")], 3, "AES-256-GCM")


async def test_a_reply_in_wire_form_reaches_http_as_its_generated_message() -> None:
    services = [ServiceRegistration("kms.v1.KMS", lambda s: None, KMS, _BatchServicer())]
    invoker = Invoker(server_interceptors(TrustedProxies()), routes(services))
    context = HttpCallContext("ipv4:127.0.0.1:5000", ())
    reply = await invoker.call("/kms.v1.KMS/EncryptBatch", kms_pb2.EncryptBatchRequest(), context)
    assert context.error() is None and type(reply) is kms_pb2.EncryptBatchReply
    assert reply.algorithm == "AES-256-GCM"
    assert (reply.results[0].ciphertext, reply.results[0].key_version) == (b"sealed", 3)
    failed = reply.results[1]
    assert failed.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0] and not failed.ciphertext
