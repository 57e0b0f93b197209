"""The error model on the wire: domain errors → status + ErrorInfo; bugs → INTERNAL without details;
malformed requests → INVALID_ARGUMENT. Exercised through a real grpc.aio server and channel."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health
from grpc_status import rpc_status

from internal.biz import errors
from internal.conf.config import GRPC
from internal.server.grpc import ServiceRegistration, new_grpc_server


async def _raise_locked(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> None:
    raise errors.FailedPrecondition("ACCOUNT_LOCKED", "account is locked", {"unlock_time": "1700000000"})


async def _crash(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> None:
    raise RuntimeError("secret-internal-detail at /srv/app.py")


async def _echo(request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=request.value)


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.StringValue.SerializeToString,
        )
        for name, fn in {"Locked": _raise_locked, "Crash": _crash, "Echo": _echo}.items()
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
