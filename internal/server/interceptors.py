"""Server interceptors: the Kratos error model (one mapping point) and the access log + RPC metrics."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status
from prometheus_client import Counter, Gauge, Histogram

from internal.biz import errors
from internal.biz.lockout import client_network
from internal.pkg.log import log_vetted, request_id, request_network, safe_request_id
from internal.server.metrics import error_reason, rpc_recorder
from internal.server.peer import TrustedProxies
from internal.service.metadata import request_client, request_metadata
from internal.service.status import domain_status_proto, status_proto
from internal.service.wire import send_as_is

log = logging.getLogger(__name__)


RPC_HANDLED = Counter("grpc_server_handled_total", "RPCs completed", ["grpc_service", "grpc_method", "grpc_code"])
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "RPC latency",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RPC_IN_FLIGHT = Gauge(
    "grpc_server_in_flight", "RPCs in progress", ["grpc_service", "grpc_method"], multiprocess_mode="livesum"
)


def status_for(code: grpc.StatusCode, reason: str, message: str) -> grpc.Status:
    return rpc_status.to_status(status_proto(code, reason, message))


class Undecodable:
    """Stands in for a request that failed to parse, so the handler can answer INVALID_ARGUMENT."""


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError):
            return Undecodable()

    return parse


def _wrap_unary(
    handler: grpc.RpcMethodHandler, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=_safe(handler.request_deserializer),
        response_serializer=send_as_is(handler.response_serializer),
    )


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place where domain errors become gRPC statuses; anything unexpected becomes INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await context.abort_with_status(
                    status_for(grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR", "request message is malformed")
                )
            try:
                return await inner(request, context)
            except errors.DomainError as exc:
                error_reason.set(exc.reason)
                await context.abort_with_status(rpc_status.to_status(domain_status_proto(exc)))
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("unhandled error", extra={"method": method})
                await context.abort_with_status(
                    status_for(grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", "internal error")
                )

        return _wrap_unary(handler, behaviour)


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _MethodMetrics:
    """What the access log needs about one method, worked out once instead of on every call: its logged
    name, whether it is logged at all (not gRPC's own health and reflection), its metric children."""

    def __init__(self, method: str) -> None:
        service, name = _split(method)
        self.logged_name = f"{service}/{name}"
        self.quiet = service.startswith("grpc.")
        self.record = None if self.quiet else rpc_recorder(method)
        self.in_flight = RPC_IN_FLIGHT.labels(service, name)
        self.latency = RPC_LATENCY.labels(service, name)
        self._labels = (service, name)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = RPC_HANDLED.labels(*self._labels, code.name)
        return child


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """One log line and metrics per RPC: method, code, duration, request id, business counters. Never the payload.

    The request id is the caller's ``x-request-id`` when ``safe_request_id`` accepts it, else a new one. The
    client address (the socket peer, or whom its trusted proxies name) is worked out here, once per call."""

    def __init__(self, proxies: TrustedProxies | None = None) -> None:
        self._metrics: dict[str, _MethodMetrics] = {}
        self._proxies = proxies or TrustedProxies()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method
        metrics = self._metrics.get(method)
        if metrics is None:  # only methods with a handler get here, so the table stays small
            metrics = self._metrics[method] = _MethodMetrics(method)
        received = handler_call_details.invocation_metadata or ()
        offered = next((v for k, v in received if k == "x-request-id"), None)

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = safe_request_id(offered) or uuid.uuid4().hex[:16]
            token = request_id.set(rid)
            client = self._proxies.client_address(context.peer() or "", received)
            network_token = request_network.set(client_network(client))
            metadata_token = request_metadata.set(received)
            client_token = request_client.set(client)
            reason_token = error_reason.set("")
            started = time.perf_counter()
            metrics.in_flight.inc()
            code = grpc.StatusCode.OK
            try:
                response = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                if metrics.record is not None:
                    metrics.record(request, response, code.name)
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if metrics.record is not None:
                    metrics.record(request, None, error_reason.get() or code.name)
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                elapsed = time.perf_counter() - started
                metrics.in_flight.dec()
                metrics.handled(code).inc()
                metrics.latency.observe(elapsed)
                if not metrics.quiet:
                    fields = {"method": metrics.logged_name, "grpc_code": code.name, "ms": round(elapsed * 1000, 2)}
                    log_vetted(log, "rpc", fields)
                request_id.reset(token)
                request_network.reset(network_token)
                request_metadata.reset(metadata_token)
                request_client.reset(client_token)
                error_reason.reset(reason_token)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
