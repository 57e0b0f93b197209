"""The server on the wire: the error model: domain errors → status + ErrorInfo; bugs → INTERNAL without details;
malformed requests → INVALID_ARGUMENT; in-flight calls drain on stop; TLS when configured."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz import errors
from internal.conf.config import GRPC, TLS
from internal.pkg.log import request_id, request_network
from internal.server.accesslog import ACCESS_LOGGER
from internal.server.grpc import ServiceRegistration, _Registrar, _Wrapping, new_grpc_server
from internal.server.interceptors import ErrorInterceptor
from internal.server.peer import TrustedProxies
from internal.service.metadata import bearer_token, call_metadata, request_metadata
from internal.service.wire import encode_encrypt_batch


async def _raise_locked(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> None:
    raise errors.FailedPrecondition("ACCOUNT_LOCKED", "account is locked", {"unlock_time": "1700000000"})


async def _crash(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> None:
    raise RuntimeError("secret-internal-detail at /srv/app.py")


async def _echo(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=request.value)


async def _request_id(
    request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=request_id.get())


async def _network(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=request_network.get())


async def _token(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> wrappers_pb2.StringValue:
    """The bearer token, and whether it came from the metadata the server read for this call."""
    read_by_server = request_metadata.get()
    kept = read_by_server is not None and call_metadata(context) is read_by_server
    return wrappers_pb2.StringValue(value=f"{bearer_token(context)} {'kept' if kept else 'read again'}")


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.StringValue.SerializeToString,
        )
        for name, fn in {
            "Locked": _raise_locked,
            "Crash": _crash,
            "Echo": _echo,
            "RequestId": _request_id,
            "Network": _network,
            "Token": _token,
        }.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Probe", handlers),))


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server, port = new_grpc_server(
        GRPC(addr="127.0.0.1:0"), [ServiceRegistration("test.v1.Probe", _register)], health.aio.HealthServicer()
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(None)


def _call(channel: grpc.aio.Channel, method: str, raw: bytes | None = None):  # type: ignore[no-untyped-def]
    stub = channel.unary_unary(f"/test.v1.Probe/{method}", request_serializer=None, response_deserializer=None)
    return stub(raw if raw is not None else wrappers_pb2.StringValue(value="x").SerializeToString())


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_domain_error_becomes_status_with_error_info(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Locked")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "account is locked"
    info = _error_info(caught.value)
    assert info.reason == "ACCOUNT_LOCKED"
    assert info.metadata["unlock_time"] == "1700000000"


async def test_unexpected_exception_is_internal_with_generic_message(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Crash")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in (caught.value.details() or "")
    assert _error_info(caught.value).reason == "INTERNAL_ERROR"


async def test_malformed_request_bytes_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Echo", raw=b"\xff\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(caught.value).reason == "VALIDATION_ERROR"


async def test_well_formed_request_passes_through(channel: grpc.aio.Channel) -> None:
    reply = await _call(channel, "Echo")
    assert wrappers_pb2.StringValue.FromString(reply).value == "x"


async def _slow(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> wrappers_pb2.StringValue:
    await asyncio.sleep(0.5)
    return wrappers_pb2.StringValue(value="done")


def _register_slow(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _slow,
        request_deserializer=wrappers_pb2.StringValue.FromString,
        response_serializer=wrappers_pb2.StringValue.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Slow", {"Run": handler}),))


async def test_stop_drains_in_flight_rpcs_within_the_grace_period() -> None:
    server, port = new_grpc_server(
        GRPC(addr="127.0.0.1:0"), [ServiceRegistration("test.v1.Slow", _register_slow)], health.aio.HealthServicer()
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        call = chan.unary_unary("/test.v1.Slow/Run", request_serializer=None, response_deserializer=None)(b"")
        await asyncio.sleep(0.1)
        await server.stop(5)
        assert wrappers_pb2.StringValue.FromString(await call).value == "done"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_tls_when_configured(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    conf = GRPC(addr="127.0.0.1:0", tls=TLS(cert_file=str(cert_file), key_file=str(key_file)))
    server, port = new_grpc_server(conf, [ServiceRegistration("test.v1.Probe", _register)], health.aio.HealthServicer())
    await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as chan:
            assert wrappers_pb2.StringValue.FromString(await _call(chan, "Echo")).value == "x"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call(plain, "Echo")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def test_the_callers_network_is_known_during_the_call(channel: grpc.aio.Channel) -> None:
    """Per-network limits (the denied-call audit) read it; the test client calls from 127.0.0.1."""
    stub = channel.unary_unary(
        "/test.v1.Probe/Network",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
    assert (await stub(wrappers_pb2.StringValue())).value == "127.0.0.0/24"
    assert request_network.get() == ""


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        ("req-42", True),
        ("trace/7:span.9_a", True),
        ("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl", False),  # a JWT
        ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", False),  # key-like hex
        ("alice@example.com", False),
        ("x" * 65, False),
    ],
)
async def test_request_id_is_kept_only_when_plain(channel: grpc.aio.Channel, offered: str, kept: bool) -> None:
    """The id lands in every log line and audit row unredacted, so a secret-looking one is replaced."""
    stub = channel.unary_unary(
        "/test.v1.Probe/RequestId",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
    reply = await stub(wrappers_pb2.StringValue(), metadata=(("x-request-id", offered),))
    if kept:
        assert reply.value == offered
    else:
        assert reply.value != offered and len(reply.value) == 16 and int(reply.value, 16) >= 0


class _BatchOnly(kms_pb2_grpc.KMSServicer):
    """A KMS servicer whose EncryptBatch answers as the real one does: an EncodedReply."""

    async def EncryptBatch(self, request: kms_pb2.EncryptBatchRequest, context: grpc.aio.ServicerContext) -> Any:
        results: list[bytes | errors.DomainError] = [item.plaintext[::-1] for item in request.items]
        results[-1] = errors.InvalidArgument("VALIDATION_ERROR", "bad item")
        return encode_encrypt_batch(results, 4, "AES_256_GCM")

    async def Decrypt(self, request: kms_pb2.DecryptRequest, context: grpc.aio.ServicerContext) -> Any:
        return kms_pb2.DecryptReply(plaintext=request.ciphertext, key_version=2)


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_encrypt_batch_is_served_by_its_own_handler() -> None:
    """Its wire bytes go out as they are, its items are counted from the counts that come with them; every other
    method keeps the generated serializer."""
    registration = ServiceRegistration("kms.v1.KMS", lambda s: kms_pb2_grpc.add_KMSServicer_to_server(_BatchOnly(), s))
    server, port = new_grpc_server(GRPC(addr="127.0.0.1:0"), [registration], health.aio.HealthServicer())
    ok = {"operation": "encrypt", "key_name": "k.batch", "key_version": "4", "outcome": "OK"}
    failed = ok | {"key_version": "", "outcome": "ITEM_ERROR"}
    before_ok, before_failed = _counter("kms_operations_total", **ok), _counter("kms_operations_total", **failed)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            kms = kms_pb2_grpc.KMSStub(chan)
            items = [kms_pb2.EncryptItem(field="f", plaintext=bytes([i]) * 3) for i in range(3)]
            reply = await kms.EncryptBatch(kms_pb2.EncryptBatchRequest(key_name="k.batch", items=items))
            opened = await kms.Decrypt(kms_pb2.DecryptRequest(key_name="k.plain", ciphertext=b"abc"))
    finally:
        await server.stop(None)
    assert [r.ciphertext for r in reply.results[:2]] == [b"\x00" * 3, b"\x01" * 3]
    assert reply.results[2].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.algorithm == "AES_256_GCM"
    assert (opened.plaintext, opened.key_version) == (b"abc", 2)
    assert _counter("kms_operations_total", **ok) == before_ok + 2
    assert _counter("kms_operations_total", **failed) == before_failed + 1


async def test_health_checks_are_counted_without_an_access_line(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    before = _counter("grpc_server_handled_total", **labels)
    with caplog.at_level(logging.INFO):
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        await _call(channel, "Echo")
    assert _counter("grpc_server_handled_total", **labels) == before + 1
    lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [r.__dict__["method"] for r in lines] == ["test.v1.Probe/Echo"]


async def test_the_client_follows_each_calls_forwarding_headers_on_one_connection() -> None:
    """The client address is worked out once per peer and forwarding headers, never reused across different ones."""
    proxies = TrustedProxies(["127.0.0.0/8"])
    probe = [ServiceRegistration("test.v1.Probe", _register)]
    server, port = new_grpc_server(GRPC(addr="127.0.0.1:0"), probe, health.aio.HealthServicer(), proxies)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            stub = chan.unary_unary(
                "/test.v1.Probe/Network",
                request_serializer=wrappers_pb2.StringValue.SerializeToString,
                response_deserializer=wrappers_pb2.StringValue.FromString,
            )
            seen = []
            for forwarded in ("198.51.100.4", "203.0.113.9", "198.51.100.4", None):
                metadata = (("x-forwarded-for", forwarded),) if forwarded else ()
                seen.append((await stub(wrappers_pb2.StringValue(), metadata=metadata)).value)
    finally:
        await server.stop(None)
    assert seen == ["198.51.100.0/24", "203.0.113.0/24", "198.51.100.0/24", "127.0.0.0/24"]


async def test_generated_services_are_served_by_their_generic_handlers_not_registered_by_name() -> None:
    """Generated code registers each method twice; the registrar keeps the generic handler (cheaper per call,
    docs/architecture.md) and registers by name only a method no generic handler serves."""
    server = grpc.aio.server()
    registrar = _Registrar(server, _Wrapping([ErrorInterceptor()]))
    kms_pb2_grpc.add_KMSServicer_to_server(_BatchOnly(), registrar)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), registrar)
    echo = grpc.unary_unary_rpc_method_handler(
        _echo,
        request_deserializer=wrappers_pb2.StringValue.FromString,
        response_serializer=wrappers_pb2.StringValue.SerializeToString,
    )
    registrar.add_registered_method_handlers("test.v1.NamedOnly", {"Echo": echo})  # no generic handler has it
    assert registrar.by_name == ["/test.v1.NamedOnly/Echo"]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            opened = await kms_pb2_grpc.KMSStub(chan).Decrypt(kms_pb2.DecryptRequest(ciphertext=b"abc"))
            checked = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
            echoed = await chan.unary_unary(
                "/test.v1.NamedOnly/Echo",
                request_serializer=wrappers_pb2.StringValue.SerializeToString,
                response_deserializer=wrappers_pb2.StringValue.FromString,
            )(wrappers_pb2.StringValue(value="hi"))
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await chan.unary_unary("/kms.v1.KMS/NoSuchMethod")(b"")
    finally:
        await server.stop(None)
    assert (opened.plaintext, opened.key_version) == (b"abc", 2)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert echoed.value == "hi"
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED



async def test_servicers_read_the_metadata_the_server_read_once(channel: grpc.aio.Channel) -> None:
    """The interceptor reads a call's metadata once and bearer_token uses that copy; none is left after the call."""
    token = channel.unary_unary(
        "/test.v1.Probe/Token",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
    first = await token(wrappers_pb2.StringValue(), metadata=(("authorization", "Bearer akms_one"),))
    second = await token(wrappers_pb2.StringValue(), metadata=(("authorization", "Bearer akms_two"),))
    assert (first.value, second.value) == ("akms_one kept", "akms_two kept")
    assert request_metadata.get() is None
