"""OpenTelemetry tracing: off by default, on when ``monitoring.otlp_endpoint`` is set.

Each unary RPC gets one SERVER span named ``service/method``; PostgreSQL (asyncpg) and Redis calls made
while it runs become its CLIENT child spans. A span carries the RPC's service, method and status code,
the SQL text (placeholders only) and Redis command names, and never a request payload, a metadata value,
an SQL parameter or a Redis argument: asyncpg's parameter capture stays off and the Redis
instrumentation replaces every argument with ``?``. An incoming W3C ``traceparent`` continues the
caller's trace.

The tracer provider is private to this module (not the OpenTelemetry global) so that tracing can be
set up and shut down more than once in one process, as tests do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import propagate
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from internal.conf.config import Monitoring

# Server spans are errors only for these codes (OpenTelemetry RPC conventions): the others are the
# caller's mistakes, already visible in rpc.grpc.status_code.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_provider: TracerProvider | None = None


def setup_tracing(conf: Monitoring, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Turn tracing on when ``conf.otlp_endpoint`` is set; returns the provider, or None when off.

    Spans go to the OTLP gRPC exporter in batches, or synchronously to ``exporter`` when one is given
    (tests pass an in-memory exporter). Calling it again replaces the previous setup.
    """
    global _provider
    shutdown_tracing()
    if not conf.otlp_endpoint:
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: conf.service_name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=conf.otlp_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    AsyncPGInstrumentor(capture_parameters=False).instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Remove the driver instrumentation and flush pending spans (blocking: call it off the event loop)."""
    global _provider
    if _provider is None:
        return
    AsyncPGInstrumentor().uninstrument()
    RedisInstrumentor().uninstrument()
    _provider.shutdown()
    _provider = None


def tracing_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The server interceptors tracing needs (outermost first); empty when tracing is off."""
    if _provider is None:
        return []
    return [RpcSpanInterceptor(_provider.get_tracer(__name__))]


def _carrier(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def _status_code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


class RpcSpanInterceptor(grpc.aio.ServerInterceptor):
    """One SERVER span per unary RPC. Health checks and reflection (``grpc.*``) are not traced: probes
    every few seconds would drown the traces that matter."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if service.startswith("grpc."):
            return handler
        inner = handler.unary_unary
        parent = propagate.extract(_carrier(handler_call_details.invocation_metadata))
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._tracer.start_as_current_span(
                f"{service}/{method}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,  # exception messages may carry user data
                set_status_on_exception=False,
            ) as span:
                code = grpc.StatusCode.OK
                try:
                    response = await inner(request, context)
                    code = _status_code(context, grpc.StatusCode.OK)
                    return response
                except grpc.aio.AbortError:
                    code = _status_code(context, grpc.StatusCode.UNKNOWN)
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except BaseException as exc:
                    code = grpc.StatusCode.UNKNOWN
                    span.set_attribute("error.type", type(exc).__qualname__)
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code in _SERVER_ERRORS:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
