"""The HTTP server (aiohttp, on the service's event loop): the HTTP/JSON API, JWKS, the OpenAPI document and
monitoring (/metrics, /healthz, /readyz), the latter optionally on a separate address.

aiohttp because it is a mature asyncio HTTP/1.1 server that runs on the loop the gRPC server already uses (no
second loop or thread, no ASGI adapter), with the limits a public port needs built in: body size (413), request
line and header size and header count, idle keep-alive timeout. What it lacks is added here: a deadline for
the request head (slowloris) answered 408, and 414/431 instead of a bare 400 for oversized request lines and
headers (``_GuardedRequestHandler``), and a deadline for the body (``Api._body``). The connection handler
leans on two aiohttp internals (its request counter, and the arguments its Server keeps); aiohttp is pinned
below 4 and tests/e2e/test_http_e2e.py::test_limits_are_answered_with_clean_4xx checks each answer.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from api.gen.auth.v1 import auth_pb2
from internal.conf.config import HTTP, Cors
from internal.server.gateway import (
    JSON,
    Codec,
    HttpCallContext,
    Invoker,
    Route,
    decode,
    encode_reply,
    grpc_peer,
    reply_codec,
    to_json,
)

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
GET_JWKS = "/auth.v1.Auth/GetJwks"
# Headers that describe the HTTP connection, not the call: never passed on as call metadata.
_NOT_METADATA = frozenset({"host", "connection", "content-length", "content-type", "accept", "keep-alive", "te"})


def _metrics() -> bytes:
    """This process's metrics, or with ``--workers`` (a shared multiprocess folder) every worker's, summed."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def openapi_document() -> str:
    """The committed OpenAPI document (``api/openapi.yaml``, generated from the protos)."""
    return (importlib.resources.files("api") / "openapi.yaml").read_text(encoding="utf-8")


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a request-head deadline and 414/431 for oversized heads."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_deadline = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        seen = self._request_count
        super().data_received(data)
        if self._request_count != seen and self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport is None or self._request_count:
            return
        body = b"request head not received in time\n"
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.force_close()
        self.transport.close()

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong):
            # The parser names the line it gave up on: a request target (starts with "/") or a header.
            line = bytes(exc.args[0]) if exc.args and isinstance(exc.args[0], bytes | bytearray) else b""
            if line.startswith(b"/"):
                return self._plain_error(414, "request target too long")
            return self._plain_error(431, "header field too large")
        if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            return self._plain_error(431, "too many header fields")
        return super().handle_error(request, status, exc, message)

    @staticmethod
    def _plain_error(status: int, text: str) -> web.StreamResponse:
        response = web.Response(status=status, text=text + "\n")
        response.force_close()
        return response


class _GuardedServer(web.Server):
    header_timeout = 10.0

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class _GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server inside Application; ours differs only in the connection handler it makes.
        server.__class__ = _GuardedServer
        assert isinstance(server, _GuardedServer)
        server.header_timeout = self._header_timeout
        return server


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The request headers as gRPC metadata: lower-case names, binary (-bin) and connection headers left out."""
    return tuple(
        (name, value)
        for name, value in ((k.lower(), v) for k, v in request.headers.items())
        if name not in _NOT_METADATA and not name.endswith("-bin")
    )


def _peer(request: web.Request) -> str:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if not peername:
        return "unknown"
    return grpc_peer(str(peername[0]), int(peername[1]))


class Api:
    """The HTTP handlers of the API: one generic handler per route, JWKS, and the OpenAPI document."""

    def __init__(self, invoker: Invoker, jwks_max_age: float, body_timeout: float) -> None:
        self._invoker = invoker
        self._body_timeout = body_timeout
        self._jwks_cache_control = f"public, max-age={int(jwks_max_age)}"
        self._openapi_yaml = openapi_document()
        self._openapi_json = json.dumps(yaml.safe_load(self._openapi_yaml), separators=(",", ":"))

    @staticmethod
    def _error(context: HttpCallContext, codec: Codec) -> web.Response:
        error = context.error()
        assert error is not None
        body = error.SerializeToString() if codec.protobuf else to_json(error)
        return web.Response(status=error.code, body=body, content_type=codec.content_type)

    async def _body(self, request: web.Request) -> bytes:
        """The request body, which must arrive within ``server.http.body_timeout`` (a slow body holds a handler)."""
        try:
            async with asyncio.timeout(self._body_timeout):
                return await request.read()
        except TimeoutError:
            timeout = web.HTTPRequestTimeout(text="request body not received in time\n")
            timeout.force_close()  # the rest of the body may still come: the connection is unusable
            raise timeout from None

    def handler(self, route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            codec = reply_codec(request.headers.get("Accept", ""))
            raw = await self._body(request) if route.body else b""
            message = decode(
                route, raw, request.headers.get("Content-Type", ""), list(request.query.items()), request.match_info
            )
            context = HttpCallContext(_peer(request), _metadata(request))
            reply = await self._invoker.call(route.grpc_method, message, context)
            if reply is None:
                return self._error(context, codec)
            return web.Response(body=encode_reply(route, reply, codec), content_type=codec.content_type)

        return handle

    async def jwks(self, request: web.Request) -> web.Response:
        """The JWKS document verbatim (RFC 7517), cacheable for ``server.http.jwks_max_age``."""
        context = HttpCallContext(_peer(request), _metadata(request))
        reply = await self._invoker.call(GET_JWKS, auth_pb2.GetJwksRequest(), context)
        if reply is None:
            return self._error(context, Codec(JSON, False))
        return web.Response(
            text=reply.jwks_json, content_type=JSON, headers={"Cache-Control": self._jwks_cache_control}
        )

    async def openapi_yaml(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi_yaml, content_type="application/yaml")

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi_json, content_type=JSON)


class Monitoring:
    """/metrics (Prometheus), /healthz (process alive), /readyz (dependencies up)."""

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready

    async def metrics(self, request: web.Request) -> web.Response:
        # prometheus_client's content type carries its own charset, which aiohttp wants as a header.
        return web.Response(body=_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self._is_ready()
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)


def cors_middleware(conf: Cors) -> Any:
    """CORS for browser front ends (off unless origins are configured): preflights answered here, and the
    allowed origin echoed on every reply to it."""
    origins = frozenset(conf.allowed_origins)
    any_origin = "*" in origins
    allow_headers = ", ".join(conf.allowed_headers)
    max_age = str(int(conf.max_age.total_seconds()))

    def allow(response: web.StreamResponse, origin: str) -> None:
        response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
        if not any_origin:
            response.headers["Vary"] = "Origin"
        if conf.allow_credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"

    @web.middleware
    async def cors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        if not origin or not (any_origin or origin in origins):
            return await handler(request)  # type: ignore[no-any-return]
        wanted = request.headers.get("Access-Control-Request-Method", "")
        if request.method == "OPTIONS" and wanted:
            match = await request.app.router.resolve(request.clone(method=wanted))
            if match.http_exception is not None:
                return match.http_exception
            response = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = wanted
            response.headers["Access-Control-Allow-Headers"] = allow_headers
            response.headers["Access-Control-Max-Age"] = max_age
            allow(response, origin)
            return response
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            allow(exc, origin)
            raise
        allow(response, origin)
        return response  # type: ignore[no-any-return]

    return cors


class HttpServer:
    """The API server on ``server.http.addr`` and, with ``monitoring_addr``, a second one for monitoring."""

    def __init__(
        self,
        conf: HTTP,
        route_table: Sequence[Route],
        invoker: Invoker,
        is_ready: Callable[[], bool],
        *,
        reuse_port: bool = False,
        grace: float = 10.0,
    ) -> None:
        self._conf = conf
        self._reuse_port = reuse_port
        self._grace = grace
        middlewares = [cors_middleware(conf.cors)] if conf.cors.allowed_origins else []
        api = web.Application(client_max_size=conf.max_body_bytes, middlewares=middlewares)
        handlers = Api(invoker, conf.jwks_max_age.total_seconds(), conf.body_timeout.total_seconds())
        resources: dict[str, Any] = {}
        for route in route_table:
            if route.path not in resources:
                resources[route.path] = api.router.add_resource(route.path)
            resource = resources[route.path]
            resource.add_route(route.verb, handlers.handler(route))
        api.router.add_get(JWKS_PATH, handlers.jwks)
        api.router.add_get("/openapi.yaml", handlers.openapi_yaml)
        api.router.add_get("/openapi.json", handlers.openapi_json)
        monitoring = Monitoring(is_ready)
        self._apps = [(conf.addr, api)]
        if conf.monitoring_addr:
            separate = web.Application()
            monitoring.add_to(separate)
            self._apps.append((conf.monitoring_addr, separate))
        else:
            monitoring.add_to(api)
        self._runners: list[web.AppRunner] = []

    @property
    def port(self) -> int:
        """The API's bound port (useful with port 0)."""
        return int(self._runners[0].addresses[0][1])

    @property
    def monitoring_port(self) -> int:
        """The port /metrics is on: the API's, or monitoring_addr's."""
        return int(self._runners[-1].addresses[0][1])

    async def start(self) -> None:
        conf = self._conf
        for addr, app in self._apps:
            runner = _GuardedRunner(
                app,
                header_timeout=conf.header_timeout.total_seconds(),
                access_log=None,  # the interceptors write one line per call; aiohttp's would log paths
                keepalive_timeout=conf.idle_timeout.total_seconds(),
                max_line_size=conf.max_header_bytes,
                max_field_size=conf.max_header_bytes,
                max_headers=conf.max_headers,
                # After an early answer (413, 408) aiohttp reads what is left of a body for this long before
                # closing, so the client sees the answer rather than a reset; its default, 10 s, is generous.
                lingering_time=2.0,
                handle_signals=False,
                shutdown_timeout=self._grace,
            )
            await runner.setup()
            self._runners.append(runner)
            host, _, port = addr.rpartition(":")
            site = web.TCPSite(runner, host, int(port), reuse_port=self._reuse_port)
            await site.start()
            log.info("http listening", extra={"addr": f"{host}:{runner.addresses[0][1]}"})

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish within the grace period, close the connections."""
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))
        self._runners.clear()
