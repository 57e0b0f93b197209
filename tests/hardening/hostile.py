"""Hostile-input helpers: every RPC of both services, the statuses each may answer, leak and shape checks,
message strategies built from the proto descriptors, and hand-made malformed wire bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import strategies as st

from api.gen.auth.v1 import auth_pb2
from api.gen.kms.v1 import kms_pb2

_KMS_AUTH = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
# What each RPC may answer (besides INVALID_ARGUMENT for a malformed message, which every RPC may answer,
# and grpc's own RESOURCE_EXHAUSTED for a message above max_message_bytes).
ALLOWED: dict[str, set[str]] = {
    "GetCaptcha": {"OK", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"},
    "VerifyCaptcha": {"OK"},
    "Register": {"OK", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED"},
    "Login": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"},
    "Logout": {"OK", "UNAUTHENTICATED"},
    "RefreshToken": {"OK", "UNAUTHENTICATED"},
    "LockStatus": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"},
    "BeginTotpEnrollment": {"OK", "UNAUTHENTICATED", "FAILED_PRECONDITION"},
    "ConfirmTotpEnrollment": {"OK", "UNAUTHENTICATED", "FAILED_PRECONDITION"},
    "DisableTotp": {"OK", "UNAUTHENTICATED", "FAILED_PRECONDITION", "PERMISSION_DENIED"},
    "GetJwks": {"OK"},
    "IntrospectToken": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED"},
    "GetProfile": {"OK", "UNAUTHENTICATED", "NOT_FOUND"},
    "ChangePassword": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED"},
    "RequestPasswordReset": {"OK", "RESOURCE_EXHAUSTED"},
    "ConfirmPasswordReset": {"OK"},
    "ListSessions": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"},
    "RevokeSession": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"},
    "RevokeOtherSessions": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"},
    "ChangeEmail": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED"},
    "ChangePhone": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED"},
    "DeleteAccount": {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED"},
    "Encrypt": {"OK", *_KMS_AUTH},
    "Decrypt": {"OK", "NOT_FOUND", "FAILED_PRECONDITION", *_KMS_AUTH},  # FAILED_PRECONDITION: pending destruction
    "EncryptBatch": {"OK", *_KMS_AUTH},
    "DecryptBatch": {"OK", *_KMS_AUTH},
    "HashField": {"OK", *_KMS_AUTH},
    "Rewrap": {"OK", "NOT_FOUND", "FAILED_PRECONDITION", *_KMS_AUTH},
    "RotateDataKey": {"OK", "ABORTED", *_KMS_AUTH},
    "GetActiveDataKey": {"OK", *_KMS_AUTH},
    "GetDataKey": {"OK", "NOT_FOUND", *_KMS_AUTH},
    "ListDataKeys": {"OK", *_KMS_AUTH},
    "GetStatus": {"OK", *_KMS_AUTH},
    "PerformMaintenance": {"OK", *_KMS_AUTH},
    "CreateKey": {"OK", "ALREADY_EXISTS", *_KMS_AUTH},
    "GetKey": {"OK", "NOT_FOUND", *_KMS_AUTH},
    "ListKeys": {"OK", *_KMS_AUTH},
    "UpdateKey": {"OK", "NOT_FOUND", *_KMS_AUTH},
    "ScheduleKeyDestruction": {"OK", "NOT_FOUND", "FAILED_PRECONDITION", *_KMS_AUTH},
    "CancelKeyDestruction": {"OK", "NOT_FOUND", "FAILED_PRECONDITION", *_KMS_AUTH},
    "Rekey": {"OK", *_KMS_AUTH},
    "GenerateDataKey": {"OK", "NOT_FOUND", "FAILED_PRECONDITION", *_KMS_AUTH},
    "DecryptDataKey": {"OK", "NOT_FOUND", "FAILED_PRECONDITION", *_KMS_AUTH},
}
# Statuses a batch item may carry.
ITEM_ALLOWED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"}

LEAK = re.compile(
    r"Traceback|File \"|/work/|/usr/|\.py\b|site-packages|asyncpg|psycopg|redis\.|pydantic|"
    r"\bSELECT\b|\bINSERT\b|\bUPDATE\b|DELETE FROM|\bWHERE\b|"
    r"\b[A-Z][A-Za-z]+(Error|Exception)\b|<[a-z_.]+ object at 0x"
)


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    path: str
    request: type[Message]
    reply: type[Message]
    input: descriptor.Descriptor


def all_rpcs() -> list[Rpc]:
    rpcs = []
    for file, service in ((auth_pb2.DESCRIPTOR, "Auth"), (kms_pb2.DESCRIPTOR, "KMS")):
        svc = file.services_by_name[service]
        for method in svc.methods:
            rpcs.append(
                Rpc(
                    service,
                    method.name,
                    f"/{svc.full_name}/{method.name}",
                    message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type),
                    method.input_type,
                )
            )
    return rpcs


def error_info(status: Any) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def problems_of_error(rpc: Rpc, err: grpc.RpcError, *, oversized: bool = False) -> list[str]:
    """Everything wrong with an error answer: undocumented status, no ErrorInfo, leaked details."""
    code = err.code().name
    out = []
    details = err.details() or ""
    if LEAK.search(details):
        out.append(f"{rpc.name}: status message leaks details: {details[:200]!r}")
    if oversized and code == "RESOURCE_EXHAUSTED":
        return out  # grpc's own size limit: no ErrorInfo by design
    if code not in ALLOWED[rpc.name] | {"INVALID_ARGUMENT"}:
        out.append(f"{rpc.name}: undocumented status {code} ({details[:120]!r})")
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        status = None
    info = error_info(status) if status is not None else None
    if info is None or not info.reason:
        out.append(f"{rpc.name}: {code} without an ErrorInfo reason ({details[:120]!r})")
    elif any(LEAK.search(v) for v in info.metadata.values()):
        out.append(f"{rpc.name}: ErrorInfo metadata leaks details: {dict(info.metadata)}")
    return out


def problems_of_reply(rpc: Rpc, raw: bytes) -> list[str]:
    reply = rpc.reply.FromString(raw)
    out = []
    for result in getattr(reply, "results", []):
        code = grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == result.status.code)).name
        if code not in ITEM_ALLOWED:
            out.append(f"{rpc.name}: item status {code}")
        if code != "OK":
            info = error_info(result.status)
            if info is None or not info.reason:
                out.append(f"{rpc.name}: item {code} without ErrorInfo")
            if LEAK.search(result.status.message):
                out.append(f"{rpc.name}: item message leaks {result.status.message[:120]!r}")
    return out


def call_raw(channel: grpc.Channel, rpc: Rpc, payload: bytes, metadata: Any = None, timeout: float = 30) -> Any:
    """Send bytes as the request (no client-side serialization); returns raw reply bytes or raises."""
    method = channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
    return method(payload, metadata=metadata, timeout=timeout)


# ---- JWTs --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(header))), json.loads(base64.urlsafe_b64decode(pad(payload)))


def forged_tokens(real: str, public_x: str, private_pem: bytes | None) -> dict[str, str]:
    """Forged and algorithm-swapped variants of a real access token."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    header, claims = unverified(real)
    raw_public = base64.urlsafe_b64decode(public_x + "=" * (-len(public_x) % 4))
    pem_public = Ed25519PublicKey.from_public_bytes(raw_public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def hs256(key: bytes, head: dict[str, Any], body: dict[str, Any]) -> str:
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(body).encode())}"
        mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    none_head = {"alg": "none", "typ": "JWT", "kid": header["kid"]}
    body = {**claims, "sub": "1", "username": "admin", "scope": "auth.admin"}
    sig = real.split(".")[2]
    tokens = {
        "alg none": f"{b64url(json.dumps(none_head).encode())}.{b64url(json.dumps(body).encode())}.",
        "alg None, no kid": b64url(b'{"alg":"None"}') + "." + b64url(json.dumps(body).encode()) + ".",
        "HS256 keyed with the Ed25519 public key (raw)": hs256(raw_public, {**header, "alg": "HS256"}, body),
        "HS256 keyed with the Ed25519 public key (PEM)": hs256(pem_public, {**header, "alg": "HS256"}, body),
        "HS256 keyed with the JWK x": hs256(public_x.encode(), {**header, "alg": "HS256"}, body),
        "claims changed, signature kept": f"{real.split('.')[0]}.{b64url(json.dumps(body).encode())}.{sig}",
        "signature stripped": real.rsplit(".", 1)[0] + ".",
        "signature of another length": real + "AA",
        "kid swapped": f"{b64url(json.dumps({**header, 'kid': 'other'}).encode())}.{real.split('.', 1)[1]}",
        "jku/x5u injected": f"{b64url(json.dumps({**header, 'jku': 'http://evil/'}).encode())}.{real.split('.', 1)[1]}",
        "four segments": real + ".AAAA",
        "not base64": "!!!.@@@.###",
        "huge (5 kB)": "a" * 2500 + "." + "b" * 2500 + "." + "c",
        "random bytes as token": b64url(bytes(range(256))),
        "refresh-shaped garbage": "A" * 43,
    }
    if private_pem is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(private_pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        now = int(time.time())
        typed = {"kid": header["kid"], "typ": "at+jwt"}  # everything a real access token has
        lifetime = claims["exp"] - claims["iat"]
        expired = {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 7200 + lifetime}
        tokens["expired, correctly signed"] = jwt.encode(expired, key, algorithm="EdDSA", headers=typed)
        future = {**claims, "iat": now + 3600, "nbf": now + 3600, "exp": now + 3600 + lifetime}
        tokens["not yet valid, correctly signed"] = jwt.encode(future, key, algorithm="EdDSA", headers=typed)
        wrong_aud = {**claims, "aud": "someone-else"}
        tokens["other audience, correctly signed"] = jwt.encode(wrong_aud, key, algorithm="EdDSA", headers=typed)
        long_lived = {**claims, "exp": claims["iat"] + 86_400 * 365}
        tokens["a year long, correctly signed"] = jwt.encode(long_lived, key, algorithm="EdDSA", headers=typed)
        tokens["untyped, correctly signed"] = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": header["kid"]})
        no_sid = {k: v for k, v in claims.items() if k != "sid"}
        tokens["no session claim, correctly signed"] = jwt.encode(
            no_sid, key, algorithm="EdDSA", headers={"kid": header["kid"]}
        )
        bad_sub = {**claims, "sub": "-1", "sid": "not-a-uuid", "exp": 2**62}
        tokens["absurd claims, correctly signed"] = jwt.encode(
            bad_sub, key, algorithm="EdDSA", headers={"kid": header["kid"]}
        )
    return tokens


# ---- generated messages --------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "' OR 1=1 --",
    '"; DROP TABLE users; --',
    "%s%s%n",
    "{0}{1}",
    "${jndi:x}",
    "../../etc/passwd",
    "é" * 40,
    "𝕏" * 20,
    "\u202eevil",
    "\ufeff",
    "admin",
    "alice@example.com",
    "+8613812345678",
    "Bearer x",
    "users.email",
    "email",
    "active",
    "inactive",
    "-1",
    "99999999999999999999",
    "\n\r\t",
    "a" * 33,
    "A" * 255,
    "x@" + "y" * 300 + ".com",
]
# Shapes that reach the email/phone normalizers (email_validator, libphonenumber) and the blind index.
IDENTIFIERS = [
    "@",
    "a@",
    "@b",
    "a@b",
    "a@b..c",
    "a@[127.0.0.1]",
    "a@[IPv6:::1]",
    "é@é.é",
    "ß@ß.de",
    "a@xn--",
    "a@xn--80ak6aa92e.com",
    '"quoted local"@example.com',
    "a+tag@example.com",
    "a@example.com\x00",
    " A@EXAMPLE.COM ",
    "a" * 65 + "@b.co",
    "a@" + "b" * 64 + ".com",
    "+",
    "+0",
    "+1",
    "+" + "9" * 40,
    "+86 138 1234 5678",
    "+86-138-1234-5678",
    "+٨٦١٣٨١٢٣٤٥٦٧٨",
    "+８６１３８１２３４５６７８",
    "+8613812345678;ext=1",
    "+1 (555) 010-0000 x 99999",
    "+" + "1" * 15,
    "ａｄｍｉｎ",
    "İstanbul",
    "admin\u0000",
    "Admin",
    "root@localhost",
]
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(IDENTIFIERS),
    st.integers(1000, 300_000).map(lambda n: "a" * n),
)
INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]))
INT64 = st.integers(-(2**63), 2**63 - 1)


def message_strategy(desc: descriptor.Descriptor, bytes_st: st.SearchStrategy[bytes], depth: int = 0) -> Any:
    cls = message_factory.GetMessageClass(desc)
    fields: dict[str, Any] = {}
    for f in desc.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            fields[f.name] = st.one_of(
                st.dictionaries(TEXT, TEXT, max_size=4),
                st.integers(100, 3000).map(lambda n: {f"k{i}": "v" * 10 for i in range(n)}),
            )
        elif f.message_type is not None:
            inner = message_strategy(f.message_type, bytes_st, depth + 1)
            is_repeated = bool(f.is_repeated)
            fields[f.name] = st.lists(inner, max_size=12) if is_repeated else inner
        elif f.type == descriptor.FieldDescriptor.TYPE_STRING:
            fields[f.name] = TEXT
        elif f.type == descriptor.FieldDescriptor.TYPE_BYTES:
            fields[f.name] = bytes_st
        elif f.type == descriptor.FieldDescriptor.TYPE_BOOL:
            fields[f.name] = st.booleans()
        elif f.type in (descriptor.FieldDescriptor.TYPE_INT64, descriptor.FieldDescriptor.TYPE_SINT64):
            fields[f.name] = INT64
        else:
            fields[f.name] = INT32

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in values.items():
            target = getattr(msg, name)
            if isinstance(value, dict):
                target.update(value)
            elif isinstance(value, list):
                target.extend(value)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=fields).map(build)


# ---- malformed wire bytes -----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def length_delimited(number: int, data: bytes) -> bytes:
    return tag(number, 2) + varint(len(data)) + data


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80", b"\xc0\xaf"]


def malformed_payloads(desc: descriptor.Descriptor) -> dict[str, bytes]:
    """Hand-made malformed encodings of ``desc``: invalid UTF-8, wrong wire types, broken framing, nesting."""
    out: dict[str, bytes] = {
        "empty message": b"",
        "truncated varint": b"\x08\xff\xff",
        "length beyond the end": tag(1, 2) + varint(1000) + b"abc",
        "length of 2^63": tag(1, 2) + varint(2**63),
        "field number 0": tag(0, 0) + b"\x01",
        "wire type 6": bytes([(1 << 3) | 6]) + b"\x01",
        "wire type 7": bytes([(1 << 3) | 7]) + b"\x01",
        "unmatched end-group": tag(1, 4),
        "unterminated group": tag(15, 3) + tag(15, 0) + b"\x01",
        "groups nested 200 deep": tag(15, 3) * 200 + tag(15, 4) * 200,
        "groups nested 5000 deep": tag(15, 3) * 5000 + tag(15, 4) * 5000,
        "unknown fields x10000": (tag(999, 0) + b"\x01") * 10_000,
        "largest field number": tag(2**29 - 1, 0) + b"\x01",
        "varint of 11 bytes": tag(1, 0) + b"\xff" * 10 + b"\x01",
    }
    for f in desc.fields:
        n = f.number
        if f.type == descriptor.FieldDescriptor.TYPE_STRING:
            for i, bad in enumerate(INVALID_UTF8):
                out[f"invalid UTF-8 in {f.name} #{i}"] = length_delimited(n, bad)
        if f.type in (descriptor.FieldDescriptor.TYPE_STRING, descriptor.FieldDescriptor.TYPE_BYTES) or (
            f.message_type is not None
        ):
            out[f"varint where {f.name} is length-delimited"] = tag(n, 0) + b"\x05"
            out[f"fixed64 in {f.name}"] = tag(n, 1) + b"\x00" * 8
            out[f"group in {f.name}"] = tag(n, 3) + tag(n, 4)
        else:
            out[f"length-delimited where {f.name} is a varint"] = length_delimited(n, b"\x01\x02")
            out[f"fixed32 in {f.name}"] = tag(n, 5) + b"\x00" * 4
            out[f"overlong varint in {f.name}"] = tag(n, 0) + b"\xff" * 9 + b"\x7f"
        if f.message_type is not None:
            inner = f.message_type
            if inner.GetOptions().map_entry:
                for i, bad in enumerate(INVALID_UTF8[:3]):
                    out[f"invalid UTF-8 map key in {f.name} #{i}"] = length_delimited(n, length_delimited(1, bad))
                    out[f"invalid UTF-8 map value in {f.name} #{i}"] = length_delimited(
                        n, length_delimited(1, b"k") + length_delimited(2, bad)
                    )
            else:
                for g in inner.fields:
                    if g.type == descriptor.FieldDescriptor.TYPE_STRING:
                        out[f"invalid UTF-8 in {f.name}.{g.name}"] = length_delimited(
                            n, length_delimited(g.number, b"\xff\xfe")
                        )
                    if g.message_type is not None and g.message_type.GetOptions().map_entry:
                        out[f"invalid UTF-8 map key in {f.name}.{g.name}"] = length_delimited(
                            n, length_delimited(g.number, length_delimited(1, b"\xc3\x28"))
                        )
                out[f"garbage inside {f.name}"] = length_delimited(n, b"\xff\xff\xff\xff")
                out[f"{f.name} x50000 empty"] = length_delimited(n, b"") * 50_000
    return out
