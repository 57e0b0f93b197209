"""The protobuf contract: generated code is fresh, auth.v1 matches docs/api.md, buf lint is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.auth.v1 import error_reason_pb2 as auth_error_reason_pb2
from api.gen.kms.v1 import error_reason_pb2 as kms_error_reason_pb2
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]

T = FieldDescriptor
STRING, BOOL, INT32, INT64 = T.TYPE_STRING, T.TYPE_BOOL, T.TYPE_INT32, T.TYPE_INT64

# The wire contract of the earlier Go service, copied from docs/api.md (auth.v1.Auth table).
# (field name, number, type) in declaration order. Existing entries never change; a field added
# to one of these messages (new number) is appended here in the same change.
AUTH_MESSAGES: dict[str, list[tuple[str, int, int]]] = {
    "GetCaptchaRequest": [("captcha_type", 1, STRING), ("target", 2, STRING)],
    "GetCaptchaReply": [("captcha_id", 1, STRING), ("image_data", 2, STRING)],
    "VerifyCaptchaRequest": [("captcha_id", 1, STRING), ("captcha_code", 2, STRING)],
    "VerifyCaptchaReply": [("success", 1, BOOL)],
    "RegisterRequest": [
        ("username", 1, STRING),
        ("password", 2, STRING),
        ("email", 3, STRING),
        ("phone", 4, STRING),
        ("captcha_id", 5, STRING),
        ("captcha_code", 6, STRING),
        ("phone_captcha_id", 7, STRING),  # added: proof of the phone (docs/security.md)
        ("phone_captcha_code", 8, STRING),
    ],
    "RegisterReply": [("message", 1, STRING)],
    "LoginRequest": [
        ("username", 1, STRING),
        ("password", 2, STRING),
        ("captcha_id", 3, STRING),
        ("captcha_code", 4, STRING),
        ("totp_code", 5, STRING),
    ],
    "LoginReply": [("access_token", 1, STRING), ("refresh_token", 2, STRING), ("expires_in", 3, INT64)],
    "LogoutRequest": [],
    "LogoutReply": [("success", 1, BOOL)],
    "RefreshTokenRequest": [("refresh_token", 1, STRING)],
    "RefreshTokenReply": [("access_token", 1, STRING), ("refresh_token", 2, STRING), ("expires_in", 3, INT64)],
    "LockStatusRequest": [("username", 1, STRING)],
    "LockStatusReply": [
        ("locked", 1, BOOL),
        ("unlock_time", 2, INT64),
        ("failed_attempts", 3, INT32),
        ("max_attempts", 4, INT32),
    ],
}

# RPC name -> (request, reply, HTTP verb, route).
AUTH_RPCS: dict[str, tuple[str, str, str, str]] = {
    "GetCaptcha": ("GetCaptchaRequest", "GetCaptchaReply", "get", "/api/v1/auth/captcha"),
    "VerifyCaptcha": ("VerifyCaptchaRequest", "VerifyCaptchaReply", "post", "/api/v1/auth/captcha/verify"),
    "Register": ("RegisterRequest", "RegisterReply", "post", "/api/v1/auth/register"),
    "Login": ("LoginRequest", "LoginReply", "post", "/api/v1/auth/login"),
    "Logout": ("LogoutRequest", "LogoutReply", "post", "/api/v1/auth/logout"),
    "RefreshToken": ("RefreshTokenRequest", "RefreshTokenReply", "post", "/api/v1/auth/refresh"),
    "LockStatus": ("LockStatusRequest", "LockStatusReply", "get", "/api/v1/auth/lock-status/{username}"),
}

UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")


def _fields(message: Descriptor) -> list[tuple[str, int, int]]:
    return [(f.name, f.number, f.type) for f in message.fields]


def _http_rule(service: ServiceDescriptor, rpc: str) -> tuple[str, str, str]:
    rule = service.methods_by_name[rpc].GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    assert verb is not None, f"{rpc} has no google.api.http annotation"
    return verb, getattr(rule, verb), rule.body


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


def _buf_binary() -> str:
    found = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if found is None:
        pytest.fail("buf not found next to the interpreter or on PATH: pip install buf-bin (test extra)")
    return found


def test_generated_code_is_fresh() -> None:
    result = _run(sys.executable, "-m", "api.generate", "--check")
    assert result.returncode == 0, f"api/gen is stale, run `python -m api.generate`:\n{result.stderr}"


@pytest.mark.parametrize("message_name", sorted(AUTH_MESSAGES))
def test_auth_message_matches_contract(message_name: str) -> None:
    message = auth_pb2.DESCRIPTOR.message_types_by_name[message_name]
    contract = AUTH_MESSAGES[message_name]
    assert _fields(message) == contract
    assert not any(f.is_repeated for f in message.fields)


@pytest.mark.parametrize("rpc", sorted(AUTH_RPCS))
def test_auth_rpc_matches_contract(rpc: str) -> None:
    service = auth_pb2.DESCRIPTOR.services_by_name["Auth"]
    request, reply, verb, route = AUTH_RPCS[rpc]
    method = service.methods_by_name[rpc]
    assert (method.input_type.full_name, method.output_type.full_name) == (f"auth.v1.{request}", f"auth.v1.{reply}")
    assert not method.client_streaming and not method.server_streaming
    expected_body = "" if verb == "get" else "*"
    assert _http_rule(service, rpc) == (verb, route, expected_body)


def test_auth_service_identity() -> None:
    service = auth_pb2.DESCRIPTOR.services_by_name["Auth"]
    assert service.full_name == "auth.v1.Auth"
    assert auth_pb2.DESCRIPTOR.package == "auth.v1"


@pytest.mark.parametrize(
    ("service", "prefix"),
    [
        (auth_pb2.DESCRIPTOR.services_by_name["Auth"], "/api/v1/auth/"),
        (kms_pb2.DESCRIPTOR.services_by_name["KMS"], "/api/v1/kms/"),
    ],
)
def test_every_rpc_has_an_http_route(service: ServiceDescriptor, prefix: str) -> None:
    for method in service.methods:
        _verb, route, _body = _http_rule(service, method.name)
        assert route.startswith(prefix), f"{method.name}: {route}"


def test_buf_lint_passes() -> None:
    deps = _run(sys.executable, "-m", "api.generate", "--buf-deps")
    assert deps.returncode == 0, deps.stderr
    result = _run(_buf_binary(), "lint")
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "enum",
    [auth_error_reason_pb2.ErrorReason.DESCRIPTOR, kms_error_reason_pb2.ErrorReason.DESCRIPTOR],
    ids=["auth.v1", "kms.v1"],
)
def test_error_reasons_are_upper_snake(enum: EnumDescriptor) -> None:
    assert enum.values[0].name == "ERROR_REASON_UNSPECIFIED"
    assert enum.values[0].number == 0
    bad = [v.name for v in enum.values if not UPPER_SNAKE.fullmatch(v.name)]
    assert not bad


def test_generated_modules_import_with_clean_descriptor_names() -> None:
    assert auth_pb2.DESCRIPTOR.name == "auth/v1/auth.proto"
    assert kms_pb2.DESCRIPTOR.name == "kms/v1/kms.proto"
    assert auth_error_reason_pb2.DESCRIPTOR.name == "auth/v1/error_reason.proto"
    assert hasattr(auth_pb2_grpc, "AuthStub")
    assert hasattr(kms_pb2_grpc, "KMSServicer")


def test_every_rpc_is_implemented_by_its_servicer() -> None:
    """The generated base classes answer UNIMPLEMENTED; every RPC must be overridden by our servicer."""
    from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
    from internal.service.auth import AuthService
    from internal.service.kms import KMSService

    for module, base, servicer in (
        (auth_pb2, auth_pb2_grpc.AuthServicer, AuthService),
        (kms_pb2, kms_pb2_grpc.KMSServicer, KMSService),
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert getattr(servicer, method.name) is not getattr(base, method.name), method.full_name
