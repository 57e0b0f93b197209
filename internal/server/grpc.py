"""The grpc.aio server: interceptors, message limits, TLS, health and reflection on the same port."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from api.gen.kms.v1 import kms_pb2
from internal.conf.config import GRPC
from internal.pkg.tracing import tracing_interceptors
from internal.server.interceptors import AccessLogInterceptor, ErrorInterceptor, PerMethodInterceptor
from internal.server.peer import TrustedProxies
from internal.service.wire import EncodedReply

# EncryptBatch, the one RPC whose speed counts per item, answers with its reply already in wire form
# (internal.service.wire): its handler sends those bytes as they are, its metrics read the counts that come
# with them, and a call over HTTP gets the generated message back (``reply_message``). Everything else sees a
# method like any other.
ENCRYPT_BATCH = "/kms.v1.KMS/EncryptBatch"


def _encoded_wire(reply: EncodedReply) -> bytes:
    return reply.wire


def _encoded_items(reply: EncodedReply) -> dict[int, int]:
    return reply.items


def _encoded_message(reply: EncodedReply) -> Message:
    return kms_pb2.EncryptBatchReply.FromString(reply.wire)


_OWN_SERIALIZERS: dict[str, Callable[[Any], bytes]] = {ENCRYPT_BATCH: _encoded_wire}
_OWN_MESSAGES: dict[str, Callable[[Any], Message]] = {ENCRYPT_BATCH: _encoded_message}


def reply_message(method: str) -> Callable[[Any], Message] | None:
    """For a method whose handler answers in a form of its own, what turns that reply into the method's
    generated message (for transports that encode messages themselves); None for every other method."""
    return _OWN_MESSAGES.get(method)


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer and the generated function that adds it to a server; with its proto service, the servicer
    is served over HTTP too (the service's ``google.api.http`` routes)."""

    full_name: str
    add_to_server: Callable[[grpc.aio.Server], None]
    descriptor: ServiceDescriptor | None = None
    servicer: Any = None


def server_interceptors(proxies: TrustedProxies) -> list[grpc.aio.ServerInterceptor]:
    """What every call passes through, gRPC or HTTP. Tracing outermost, so its span sees the status the error
    interceptor sets."""
    return [
        *tracing_interceptors(),
        AccessLogInterceptor(proxies, batch_items={ENCRYPT_BATCH: _encoded_items}),
        ErrorInterceptor(),
    ]


def _own_serializer(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    serializer = _OWN_SERIALIZERS.get(method)
    return handler if serializer is None else handler._replace(response_serializer=serializer)


class _Wrapping:
    """A method's handler as served: its own reply serializer (if it has one), inside the per-method
    interceptors, applied once when the method is first seen rather than by grpc.aio's interceptor chain on
    every call (which awaits each interceptor's ``intercept_service`` per call, CPU a health check would pay)."""

    def __init__(self, interceptors: Sequence[PerMethodInterceptor]) -> None:
        self._interceptors = list(reversed(interceptors))  # innermost first

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        handler = _own_serializer(method, handler)
        for interceptor in self._interceptors:
            handler = interceptor.wrap_handler(method, handler)
        return handler


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, wrapping: _Wrapping) -> None:
        self._inner = inner
        self._wrapping = wrapping
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:  # the same handler object every call: wrapped once
            known = self._wrapped[method] = (handler, self._wrapping(method, handler))
        return known[1]


class _Lookup(grpc.HandlerCallDetails):
    """A method name to ask generic handlers about, as grpc.aio asks them for a call."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Registrar:
    """What every service's ``add_to_server`` registers into (ours, health, reflection): the server, each method
    wrapped as served (``_Wrapping``).

    Generated code offers each method twice: in a generic handler and registered by name. The registrar keeps
    only the generic one wherever it serves the method. grpc.aio keeps one pending request per method registered
    by name and, for every call it accepts, waits on all of them at once: with this service's 48 methods that
    cost a health Check or an Encrypt about 6% more server CPU under load than the same methods served through
    the generic handlers (docs/architecture.md, "Fast paths")."""

    def __init__(self, server: grpc.aio.Server, wrapping: _Wrapping) -> None:
        self._server = server
        self._wrapping = wrapping
        self._generic: list[grpc.GenericRpcHandler] = []
        self.by_name: list[str] = []  # the methods registered by name after all (no generic handler serves them)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic += handlers  # asked as they are in ``_serves``: nothing is wrapped before it is served
        self._server.add_generic_rpc_handlers([_WrappedGeneric(h, self._wrapping) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        unserved = {name: h for name, h in handlers.items() if not self._serves(f"/{service}/{name}")}
        if unserved:
            self.by_name += (f"/{service}/{name}" for name in unserved)
            self._server.add_registered_method_handlers(
                service, {name: self._wrapping(f"/{service}/{name}", h) for name, h in unserved.items()}
            )

    def _serves(self, method: str) -> bool:
        lookup = _Lookup(method)
        return any(h.service(lookup) is not None for h in self._generic)


def _credentials(conf: GRPC) -> grpc.ServerCredentials:
    tls = conf.tls
    key_pair = [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())]
    if tls.client_ca_file:
        return grpc.ssl_server_credentials(
            key_pair, root_certificates=Path(tls.client_ca_file).read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(key_pair)


def new_grpc_server(
    conf: GRPC,
    services: Sequence[ServiceRegistration],
    health_servicer: health.aio.HealthServicer,
    proxies: TrustedProxies | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build and bind the server (not started). Returns it with the bound port (useful with port 0)."""
    options = [
        ("grpc.max_receive_message_length", conf.max_message_bytes),
        ("grpc.max_send_message_length", conf.max_message_bytes),
        # Several workers share the port deliberately; a single server must fail on a port clash instead.
        ("grpc.so_reuseport", 1 if conf.workers > 1 else 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    interceptors = server_interceptors(proxies or TrustedProxies())
    per_call = [i for i in interceptors if not isinstance(i, PerMethodInterceptor)]
    server = grpc.aio.server(interceptors=per_call or None, options=options)
    registrar: Any = _Registrar(server, _Wrapping([i for i in interceptors if isinstance(i, PerMethodInterceptor)]))
    for service in services:
        service.add_to_server(registrar)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    names = [s.full_name for s in services]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], registrar
    )
    if conf.tls.enabled:
        port = server.add_secure_port(conf.addr, _credentials(conf))
    else:
        port = server.add_insecure_port(conf.addr)
    return server, port
