"""Hostile input against every RPC of auth.v1 and kms.v1 through a real server: property-based messages,
hand-made malformed wire bytes, random bytes, oversized messages and fields, forged and swapped JWTs,
huge batches. Only documented statuses, always an ErrorInfo, no leaked details, the server keeps serving."""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.e2e.harness import create_credential, introspection_credential
from tests.hardening.cluster import Cluster, health_status
from tests.hardening.hostile import (
    ALLOWED,
    IDENTIFIERS,
    Rpc,
    all_rpcs,
    call_raw,
    forged_tokens,
    malformed_payloads,
    message_strategy,
    problems_of_error,
    problems_of_reply,
)
from tests.hardening.summary import SUMMARY

RPCS = all_rpcs()
EXAMPLES = 60
FEWER = {"RotateDataKey": 15, "PerformMaintenance": 15, "Register": 40, "Login": 40}
OVERSIZED = 5 * 1024 * 1024  # above the default server.grpc.max_message_bytes (4 MiB)


@dataclass
class Hostile:
    target: str
    channel: grpc.Channel
    metadata: list[tuple[str, Any]]
    ciphertexts: list[bytes]
    tokens: dict[str, str]
    introspector: str  # a service credential with auth.introspect
    problems: list[str] = field(default_factory=list)
    sent: int = 0

    def send(self, rpc: Rpc, payload: bytes, md: Any, kind: str, *, oversized: bool = False) -> str:
        SUMMARY.add_hostile(kind)
        self.sent += 1
        try:
            raw = call_raw(self.channel, rpc, payload, md)
        except grpc.RpcError as err:
            self.problems += problems_of_error(rpc, err, oversized=oversized)
            return err.code().name
        if oversized:
            self.problems.append(f"{rpc.name}: a {len(payload)}-byte message was accepted")
        self.problems += problems_of_reply(rpc, raw)
        return "OK"


@pytest.fixture(scope="module")
def hostile(cluster: Cluster, credential: str, hardening_database: str) -> Iterator[Hostile]:
    target = cluster.targets[0]
    introspector = introspection_credential(hardening_database)
    reader = create_credential(cluster.cli_env(), "hostile-reader", "kms.decrypt")
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
    auth = auth_pb2_grpc.AuthStub(channel)
    kms = kms_pb2_grpc.KMSStub(channel)
    username, password = f"hostile_{secrets.token_hex(4)}", "Hostile-pass-1"
    auth.Register(auth_pb2.RegisterRequest(username=username, password=password, email=f"{username}@example.com"))
    pair = auth.Login(auth_pb2.LoginRequest(username=username, password=password))
    jwk = auth.GetJwks(auth_pb2.GetJwksRequest()).keys[0]
    pem_path = Path(cluster.env["APP__DATA__DATA_DIR"]) / "jwt_ed25519.pem"
    tokens = forged_tokens(pair.access_token, jwk.x, pem_path.read_bytes() if pem_path.exists() else None)
    admin = (("authorization", f"Bearer {credential}"),)
    sealed = kms.Encrypt(kms_pb2.EncryptRequest(field="email", plaintext=b"a@b.c"), metadata=admin).ciphertext
    variants = [
        sealed,
        sealed[:-1],
        sealed[:10],
        sealed[:1],
        bytes([sealed[0] ^ 1]) + sealed[1:],
        sealed[:-1] + bytes([sealed[-1] ^ 1]),
    ]
    for version in (0, 9999, 2**31 - 1, 2**32 - 1):  # the key version inside the envelope, rewritten
        for offset in (1, 2):
            forged = bytearray(sealed)
            if len(forged) >= offset + 4:
                forged[offset : offset + 4] = struct.pack(">I", version)
                variants.append(bytes(forged))
    metadata: list[tuple[str, Any]] = [
        ("none", None),
        ("user access token", (("authorization", f"Bearer {pair.access_token}"),)),
        ("admin credential", admin),
        ("decrypt-only credential", (("authorization", f"Bearer {reader}"),)),
        ("bare Bearer", (("authorization", "Bearer"),)),
        ("Basic scheme", (("authorization", "Basic YWRtaW46YWRtaW4="),)),
        ("credential as user token", (("authorization", f"Bearer {credential}x"),)),
        ("6 kB token", (("authorization", "Bearer " + "A" * 6000),)),
        ("two authorization headers", (("authorization", "Bearer a"), ("authorization", f"Bearer {credential}"))),
        *[(f"forged JWT: {name}", (("authorization", f"Bearer {tok}"),)) for name, tok in tokens.items()],
    ]
    ctx = Hostile(target, channel, metadata, variants, tokens, introspector)
    try:
        yield ctx
    finally:
        channel.close()


def _bytes_strategy(ciphertexts: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=80),
        st.sampled_from(ciphertexts),
        st.binary(min_size=1, max_size=8).map(lambda b: b"\x01" + b * 8),
        st.integers(64 * 1024 - 2, 64 * 1024 + 2).map(lambda n: b"p" * n),  # around max_plaintext_bytes
        st.integers(100_000, 1_000_000).map(os.urandom),
    )


@pytest.mark.parametrize("rpc", RPCS, ids=[f"{r.service}.{r.name}" for r in RPCS])
def test_property_based_messages(hostile: Hostile, rpc: Rpc) -> None:
    """Random well-formed messages (hostile strings, huge fields, big maps and batches) × every kind of caller."""
    hostile.problems.clear()

    @settings(
        max_examples=FEWER.get(rpc.name, EXAMPLES),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        request=message_strategy(rpc.input, _bytes_strategy(hostile.ciphertexts)),
        md=st.sampled_from(hostile.metadata),
    )
    def check(request: Any, md: tuple[str, Any]) -> None:
        payload = request.SerializeToString()
        hostile.send(rpc, payload, md[1], "property-based messages (hypothesis)", oversized=len(payload) > OVERSIZED)

    check()
    assert not hostile.problems, hostile.problems[:20]


@pytest.mark.parametrize("rpc", RPCS, ids=[f"{r.service}.{r.name}" for r in RPCS])
def test_malformed_and_random_bytes(hostile: Hostile, rpc: Rpc) -> None:
    """Invalid UTF-8 in every string field, wrong wire types, broken framing, deep nesting, random bytes,
    and a message above max_message_bytes."""
    hostile.problems.clear()
    authorized = dict(hostile.metadata)["admin credential" if rpc.service == "KMS" else "user access token"]
    for payload in malformed_payloads(rpc.input).values():
        hostile.send(rpc, payload, authorized, "malformed wire bytes (UTF-8, wire types, framing, nesting)")

    @settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(payload=st.binary(max_size=512))
    def random_bytes(payload: bytes) -> None:
        hostile.send(rpc, payload, authorized, "random bytes as the request message")

    random_bytes()
    hostile.send(rpc, os.urandom(OVERSIZED), authorized, "oversized messages (> max_message_bytes)", oversized=True)
    assert not hostile.problems, hostile.problems[:20]


def _code(call: Any) -> tuple[str, str]:
    try:
        reply = call()
        return "OK", str(reply).replace("\n", " ")[:80]
    except grpc.RpcError as err:
        from tests.hardening.workload import error_reason

        return err.code().name, error_reason(err)


def test_forged_swapped_and_expired_tokens(hostile: Hostile) -> None:
    """Every forged token is refused by every RPC that takes one and reported inactive by introspection."""
    hostile.problems.clear()
    auth = auth_pb2_grpc.AuthStub(hostile.channel)
    kms = kms_pb2_grpc.KMSStub(hostile.channel)
    wanted = {"TOKEN_INVALID", "TOKEN_EXPIRED"}
    assert "expired, correctly signed" in hostile.tokens
    for name, token in hostile.tokens.items():
        md = (("authorization", f"Bearer {token}"),)
        calls = {
            "GetProfile": lambda md=md: auth.GetProfile(auth_pb2.GetProfileRequest(), metadata=md, timeout=10),
            "Logout": lambda md=md: auth.Logout(auth_pb2.LogoutRequest(), metadata=md, timeout=10),
            "LockStatus": lambda md=md: auth.LockStatus(
                auth_pb2.LockStatusRequest(username="admin"), metadata=md, timeout=10
            ),
            "BeginTotpEnrollment": lambda md=md: auth.BeginTotpEnrollment(
                auth_pb2.BeginTotpEnrollmentRequest(password="Hostile-pass-1"), metadata=md, timeout=10
            ),
        }
        for rpc_name, call in calls.items():
            SUMMARY.add_hostile("forged/alg-swapped/expired JWTs")
            code, why = _code(call)
            if code != "UNAUTHENTICATED" or why not in wanted:
                hostile.problems.append(f"{rpc_name} with token '{name}': {code} {why}")
        if name == "expired, correctly signed":
            code, why = _code(calls["GetProfile"])
            assert why == "TOKEN_EXPIRED", (code, why)
        SUMMARY.add_hostile("forged/alg-swapped/expired JWTs")
        introspect_md = (("authorization", f"Bearer {hostile.introspector}"),)
        info = auth.IntrospectToken(auth_pb2.IntrospectTokenRequest(token=token), metadata=introspect_md, timeout=10)
        if info != auth_pb2.IntrospectTokenReply():
            hostile.problems.append(f"IntrospectToken says '{name}' is active")
        SUMMARY.add_hostile("forged/alg-swapped/expired JWTs")
        code, why = _code(lambda md=md: kms.Encrypt(kms_pb2.EncryptRequest(field="f"), metadata=md, timeout=10))
        if code != "UNAUTHENTICATED":
            hostile.problems.append(f"KMS Encrypt with token '{name}': {code} {why}")
        SUMMARY.add_hostile("random bytes as refresh tokens")
        code, why = _code(lambda t=token: auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=t), timeout=10))
        if code != "UNAUTHENTICATED":
            hostile.problems.append(f"RefreshToken with '{name}': {code} {why}")
    assert not hostile.problems, hostile.problems


def test_identifier_shapes_through_every_normalizer(hostile: Hostile) -> None:
    """Odd emails and phone numbers into login, registration, captcha targets and the blind index."""
    hostile.problems.clear()
    rpcs = {r.name: r for r in RPCS}
    md = dict(hostile.metadata)
    for value in IDENTIFIERS:
        requests: list[tuple[str, Any, Any]] = [
            ("Login", auth_pb2.LoginRequest(username=value, password="Password123"), None),
            (
                "Register",
                auth_pb2.RegisterRequest(
                    username=f"id_{secrets.token_hex(4)}", password="Password123", email=value, phone=value
                ),
                None,
            ),
            (
                "Register",
                auth_pb2.RegisterRequest(
                    username=f"id_{secrets.token_hex(4)}",
                    password="Password123",
                    email=f"{secrets.token_hex(4)}@e.co",
                    phone=value,
                ),
                None,
            ),
            ("GetCaptcha", auth_pb2.GetCaptchaRequest(captcha_type="email", target=value), None),
            ("GetCaptcha", auth_pb2.GetCaptchaRequest(captcha_type="sms", target=value), None),
            ("LockStatus", auth_pb2.LockStatusRequest(username=value), md["user access token"]),
            ("HashField", kms_pb2.HashFieldRequest(field="email", value=value), md["admin credential"]),
            ("HashField", kms_pb2.HashFieldRequest(field="phone", value=value), md["admin credential"]),
        ]
        for name, request, metadata in requests:
            hostile.send(rpcs[name], request.SerializeToString(), metadata, "odd emails/phones through the normalizers")
    assert not hostile.problems, hostile.problems


def test_huge_batches_and_random_ciphertexts(hostile: Hostile) -> None:
    hostile.problems.clear()
    kms = kms_pb2_grpc.KMSStub(hostile.channel)
    md = dict(hostile.metadata)["admin credential"]
    expectations = [
        (
            "EncryptBatch 1001 items",
            lambda: kms.EncryptBatch(
                kms_pb2.EncryptBatchRequest(items=[kms_pb2.EncryptItem(field="f", plaintext=b"x")] * 1001),
                metadata=md,
                timeout=30,
            ),
            {"INVALID_ARGUMENT BATCH_TOO_LARGE"},
        ),
        (
            "EncryptBatch 200000 empty items",
            lambda: kms.EncryptBatch(
                kms_pb2.EncryptBatchRequest(items=[kms_pb2.EncryptItem()] * 200_000), metadata=md, timeout=30
            ),
            {"INVALID_ARGUMENT BATCH_TOO_LARGE"},
        ),
        (
            "DecryptBatch 1001 random ciphertexts",
            lambda: kms.DecryptBatch(
                kms_pb2.DecryptBatchRequest(items=[kms_pb2.DecryptItem(field="f", ciphertext=os.urandom(40))] * 1001),
                metadata=md,
                timeout=30,
            ),
            {"INVALID_ARGUMENT BATCH_TOO_LARGE"},
        ),
        (
            "EncryptBatch 60 x 64 KiB",
            lambda: kms.EncryptBatch(
                kms_pb2.EncryptBatchRequest(items=[kms_pb2.EncryptItem(field="f", plaintext=b"p" * 65536)] * 60),
                metadata=md,
                timeout=60,
            ),
            {"OK"},
        ),
        (
            "Encrypt 64 KiB + 1",
            lambda: kms.Encrypt(kms_pb2.EncryptRequest(field="f", plaintext=b"p" * 65537), metadata=md, timeout=30),
            {"INVALID_ARGUMENT PLAINTEXT_TOO_LARGE"},
        ),
    ]
    for name, call, allowed in expectations:
        SUMMARY.add_hostile("huge batches and plaintexts")
        code, why = _code(call)
        got = code if code == "OK" else f"{code} {why}"
        if got not in allowed:
            hostile.problems.append(f"{name}: {got}, expected {allowed}")
    batch = kms.DecryptBatch(
        kms_pb2.DecryptBatchRequest(
            items=[kms_pb2.DecryptItem(field="email", ciphertext=c) for c in hostile.ciphertexts]
            + [kms_pb2.DecryptItem(field="email", ciphertext=os.urandom(n)) for n in range(0, 400, 4)]
        ),
        metadata=md,
        timeout=30,
    )
    SUMMARY.add_hostile("random/tampered ciphertexts", len(batch.results))
    codes = [r.status.code for r in batch.results]
    assert codes[0] == 0 and all(c in (3, 5) for c in codes[1:]), codes  # INVALID_ARGUMENT or NOT_FOUND
    assert not hostile.problems, hostile.problems


def test_server_survived_everything(hostile: Hostile, cluster: Cluster) -> None:
    """After hostile input to every RPC, still alive and SERVING, nothing logged as an unhandled error.

    It sends its own round of malformed messages (anonymous and authorized) first, so it proves the same
    when run alone as after the rest of this module."""
    assert {r.name for r in RPCS} == set(ALLOWED)
    hostile.problems.clear()
    before = hostile.sent
    for rpc in RPCS:
        authorized = dict(hostile.metadata)["admin credential" if rpc.service == "KMS" else "user access token"]
        for payload in malformed_payloads(rpc.input).values():
            for md in (None, authorized):
                hostile.send(rpc, payload, md, "malformed wire bytes (UTF-8, wire types, framing, nesting)")
    assert hostile.sent - before >= 2 * len(RPCS), "the survival check needs hostile input behind it"
    assert not hostile.problems, hostile.problems[:20]
    for replica in cluster.replicas:
        assert replica.proc.poll() is None, f"{replica.target} exited"
        assert health_status(replica.target) == health_pb2.HealthCheckResponse.SERVING
    unhandled = [line for line in cluster.logs().splitlines() if "unhandled error" in line or "Traceback" in line]
    assert not unhandled, unhandled[:5]
    SUMMARY.hostile_notes.append(
        f"RPCs covered: {len(RPCS)} ({sum(r.service == 'Auth' for r in RPCS)} auth.v1 + "
        f"{sum(r.service == 'KMS' for r in RPCS)} kms.v1); afterwards every replica alive and SERVING, "
        f"no unhandled error or traceback in any server log"
    )
