"""Tracing through a real grpc.aio server: one SERVER span per RPC with its status, PostgreSQL and Redis
calls as its children, no payload/metadata/parameter in any attribute, and nothing at all when off.

The handler talks to the run's real PostgreSQL and Redis (tests/conftest.py: the local services, or the
embedded ones on a machine without them; never skipped)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import wrappers_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from internal.biz import errors
from internal.conf.config import Monitoring
from internal.pkg.tracing import setup_tracing, shutdown_tracing, tracing_interceptors
from internal.server.interceptors import AccessLogInterceptor, ErrorInterceptor

SECRET = "s3cret-payload-value"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ON = Monitoring(otlp_endpoint="http://collector.invalid:4317", service_name="authkms-test")


class _Backends:
    def __init__(self, pg: asyncpg.Connection, redis: aioredis.Redis) -> None:
        self.pg, self.redis = pg, redis

    async def query(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> wrappers_pb2.StringValue:
        assert await self.pg.fetchval("SELECT 1") == 1
        assert await self.pg.fetchval("SELECT $1::text", request.value) == request.value
        assert await self.redis.ping()
        assert await self.redis.echo(request.value) == request.value.encode()
        return wrappers_pb2.StringValue(value="done")

    async def locked(self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> None:
        raise errors.FailedPrecondition("ACCOUNT_LOCKED", "account is locked")

    async def crash(self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> None:
        raise RuntimeError(SECRET)

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
            for name, fn in {"Query": self.query, "Locked": self.locked, "Crash": self.crash}.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Probe", handlers),))


@pytest.fixture
async def backends(postgres_server_url: str, redis_url: str) -> AsyncIterator[_Backends]:
    pg = await asyncpg.connect(postgres_server_url)
    redis = aioredis.from_url(redis_url)
    try:
        yield _Backends(pg, redis)
    finally:
        await redis.aclose()
        await pg.close()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    shutdown_tracing()


async def _call(backends: _Backends, method: str) -> grpc.StatusCode:
    """One RPC through a server wired as new_grpc_server wires it (tracing outermost)."""
    server = grpc.aio.server(interceptors=[*tracing_interceptors(), AccessLogInterceptor(), ErrorInterceptor()])
    backends.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = channel.unary_unary(
                f"/test.v1.Probe/{method}",
                request_serializer=wrappers_pb2.StringValue.SerializeToString,
                response_deserializer=wrappers_pb2.StringValue.FromString,
            )
            metadata = (("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"), ("x-api-key", SECRET))
            try:
                await stub(wrappers_pb2.StringValue(value=SECRET), metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
    finally:
        await server.stop(None)


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


async def test_one_server_span_per_rpc_with_db_and_redis_children(
    exporter: InMemorySpanExporter, backends: _Backends
) -> None:
    assert setup_tracing(ON, exporter) is not None
    assert await _call(backends, "Query") == grpc.StatusCode.OK

    spans = exporter.get_finished_spans()
    [rpc] = _server_spans(exporter)
    assert rpc.name == "test.v1.Probe/Query"
    assert rpc.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "test.v1.Probe",
        "rpc.method": "Query",
        "rpc.grpc.status_code": 0,
    }
    assert rpc.status.status_code == StatusCode.UNSET
    assert rpc.resource.attributes["service.name"] == "authkms-test"
    assert rpc.context is not None and rpc.parent is not None
    assert f"{rpc.context.trace_id:032x}" == TRACE_ID, "the caller's traceparent continues its trace"

    children = [s for s in spans if s is not rpc]
    assert [s.name for s in children] == ["SELECT", "SELECT", "PING", "ECHO"]
    for child in children:
        assert child.kind == SpanKind.CLIENT
        assert child.parent is not None and child.parent.span_id == rpc.context.span_id
    assert children[0].attributes is not None and children[0].attributes["db.system"] == "postgresql"
    assert children[1].attributes is not None and children[1].attributes["db.statement"] == "SELECT $1::text"


async def test_no_payload_metadata_or_parameter_reaches_a_span(
    exporter: InMemorySpanExporter, backends: _Backends
) -> None:
    setup_tracing(ON, exporter)
    assert await _call(backends, "Query") == grpc.StatusCode.OK
    assert await _call(backends, "Crash") == grpc.StatusCode.INTERNAL

    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    for span in spans:
        assert SECRET not in span.to_json()


async def test_status_codes_and_error_status(exporter: InMemorySpanExporter, backends: _Backends) -> None:
    setup_tracing(ON, exporter)
    assert await _call(backends, "Locked") == grpc.StatusCode.FAILED_PRECONDITION
    assert await _call(backends, "Crash") == grpc.StatusCode.INTERNAL

    locked, crash = _server_spans(exporter)
    assert (locked.name, crash.name) == ("test.v1.Probe/Locked", "test.v1.Probe/Crash")
    assert locked.attributes is not None and locked.attributes["rpc.grpc.status_code"] == 9
    assert locked.status.status_code == StatusCode.UNSET, "a caller's mistake is not a server error"
    assert crash.attributes is not None and crash.attributes["rpc.grpc.status_code"] == 13
    assert crash.status.status_code == StatusCode.ERROR


async def test_off_by_default_no_interceptor_no_spans(exporter: InMemorySpanExporter, backends: _Backends) -> None:
    assert setup_tracing(Monitoring(), exporter) is None
    assert tracing_interceptors() == []
    assert await _call(backends, "Query") == grpc.StatusCode.OK
    assert exporter.get_finished_spans() == ()


async def test_shutdown_unwraps_drivers_and_setup_can_run_again(
    exporter: InMemorySpanExporter, backends: _Backends
) -> None:
    setup_tracing(ON, InMemorySpanExporter())
    shutdown_tracing()
    assert tracing_interceptors() == []
    assert not hasattr(asyncpg.connection.Connection.fetchval, "__wrapped__")
    assert not hasattr(aioredis.Redis.execute_command, "__wrapped__")

    setup_tracing(ON, exporter)
    assert await backends.pg.fetchval("SELECT 1") == 1
    assert await backends.redis.ping()
    assert [s.name for s in exporter.get_finished_spans()] == ["SELECT", "PING"]


def test_otlp_exporter_is_the_default_when_on() -> None:
    provider = setup_tracing(ON)
    try:
        assert provider is not None
        assert tracing_interceptors()
    finally:
        shutdown_tracing()
