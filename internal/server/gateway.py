"""HTTP/JSON transcoding of the gRPC services: one route table read off their ``google.api.http`` annotations.

Nothing here is written per RPC. Every annotated method of every served service becomes a route (path
variables, query parameters, ``body: "*"`` or a body field, additional bindings), and a call that comes in over
HTTP runs through the very interceptors a gRPC call runs through (tracing, access log + metrics + client
address, error mapping) into the same servicer method. A new RPC with an annotation is served over HTTP as soon
as its servicer has the method.

The wire conventions are Kratos v2's (``encoding/json``, ``transport/http/codec.go``, ``errors``):

- replies are protojson with unpopulated fields emitted (lowerCamelCase names, 64-bit integers as strings);
- requests accept JSON names and proto names and ignore unknown fields; an empty body is an empty message;
- ``Content-Type`` picks the request codec and ``Accept`` the reply codec: JSON (the default), protobuf
  (``application/x-protobuf``, ``application/protobuf`` or Kratos' own ``application/proto``) or a form;
- an error's HTTP status is Kratos' mapping of its gRPC code, and its body is ``errors.v1.Status``
  (``{"code","reason","message","metadata"}``) in the reply codec. An undecodable request is a
  ``VALIDATION_ERROR`` (400), as over gRPC.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from api.gen.errors.v1 import errors_pb2
from internal.server.grpc import ServiceRegistration, reply_message
from internal.server.interceptors import Undecodable

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf", "application/proto"})
_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")

# Kratos' transport/http/status FromGRPCCode: the HTTP status of each gRPC code.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    verb: str  # GET, POST, ...
    template: str  # as annotated: /api/v1/auth/lock-status/{username}
    path: str  # as the router wants it: /api/v1/auth/lock-status/{v0}
    variables: Mapping[str, str]  # router variable -> dotted request field path
    body: str  # "", "*" or the request field the body fills
    method: MethodDescriptor
    servicer: Any

    @property
    def grpc_method(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def input(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def output(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def _bindings(method: MethodDescriptor) -> Iterator[http_pb2.HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return
    rule = options.Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def _verb_and_template(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if kind not in _VERBS:
        raise ValueError(f"http rule without a pattern: {rule}")
    return kind.upper(), getattr(rule, kind)


def _segment_regex(pattern: str) -> str:
    """A path-template variable's pattern (``*``, ``**``, ``keys/*``) as a router regex."""
    parts = []
    for segment in pattern.split("/"):
        parts.append("[^/]+" if segment == "*" else ".+" if segment == "**" else re.escape(segment))
    return "/".join(parts)


def _router_path(template: str) -> tuple[str, dict[str, str]]:
    variables: dict[str, str] = {}

    def variable(match: re.Match[str]) -> str:
        name = f"v{len(variables)}"
        variables[name] = match.group(1).strip()
        pattern = match.group(2)
        return f"{{{name}}}" if pattern in (None, "*") else f"{{{name}:{_segment_regex(pattern)}}}"

    return _VARIABLE.sub(variable, template), variables


def routes(services: Sequence[ServiceRegistration]) -> list[Route]:
    """Every HTTP binding of every service served over HTTP, paths without variables first (so a literal such
    as ``/keys/active`` is never taken for ``/keys/{version}``)."""
    table = []
    for service in services:
        if service.descriptor is None:
            continue
        for method in service.descriptor.methods:
            for rule in _bindings(method):
                verb, template = _verb_and_template(rule)
                path, variables = _router_path(template)
                table.append(Route(verb, template, path, variables, rule.body, method, service.servicer))
    return sorted(table, key=lambda route: (bool(route.variables), route.template))


# ------------------------------------------------------------------------------------------------
# request decoding


def media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _field(descriptor: Any, name: str) -> FieldDescriptor | None:
    return descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)


def _scalar(field: FieldDescriptor, text: str) -> Any:
    """A query/path/form value as the JSON value protojson expects for the field."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ValueError(f"{field.name}: expected true or false")
        return lowered in ("true", "1")
    return text


def _assign(target: dict[str, Any], descriptor: Any, path: str, text: str) -> None:
    """Put one ``a.b.c=value`` pair into a protojson dict (proto names); unknown fields are ignored."""
    *parents, leaf = path.split(".")
    for name in parents:
        field = _field(descriptor, name)
        if field is None or field.message_type is None or field.is_repeated:
            return
        target = target.setdefault(field.name, {})
        descriptor = field.message_type
    field = _field(descriptor, leaf)
    if field is None or field.message_type is not None:
        return
    value = _scalar(field, text)
    if field.is_repeated:
        target.setdefault(field.name, []).append(value)
    else:
        target[field.name] = value


def _from_pairs(message: Message, pairs: Sequence[tuple[str, str]]) -> None:
    values: dict[str, Any] = {}
    for key, text in pairs:
        _assign(values, message.DESCRIPTOR, key, text)
    if values:
        parsed = type(message)()
        json_format.ParseDict(values, parsed, ignore_unknown_fields=True)
        message.MergeFrom(parsed)


def _body_target(message: Message, body: str) -> Message:
    if body == "*":
        return message
    field = message.DESCRIPTOR.fields_by_name[body]
    if field.message_type is None:
        raise ValueError(f"body field {body} is not a message")
    return getattr(message, body)  # type: ignore[no-any-return]


def decode(
    route: Route, raw: bytes, content_type: str, query: Sequence[tuple[str, str]], path: Mapping[str, str]
) -> Message | Undecodable:
    """The request message: body (in its codec), then query parameters, then path variables (which win)."""
    message = route.input()
    try:
        if route.body and raw:
            target = _body_target(message, route.body)
            kind = media_type(content_type) if content_type else JSON
            if kind in PROTOBUF_TYPES:
                target.MergeFromString(raw)
            elif kind == FORM:
                _from_pairs(target, parse_qsl(raw.decode(), keep_blank_values=True))
            elif kind == JSON or kind.endswith("+json"):
                document = json.loads(raw)
                if not isinstance(document, dict):
                    return Undecodable()
                json_format.ParseDict(document, target, ignore_unknown_fields=True)
            else:
                return Undecodable()
        _from_pairs(message, [(k, v) for k, v in query if k not in path])
        _from_pairs(message, [(route.variables[name], value) for name, value in path.items()])
    except (json_format.ParseError, DecodeError, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return Undecodable()
    return message


# ------------------------------------------------------------------------------------------------
# reply and error encoding


class Codec(NamedTuple):
    content_type: str
    protobuf: bool


JSON_CODEC = Codec(JSON, False)


def reply_codec(accept: str) -> Codec:
    """The first media type of ``Accept`` that we speak, else JSON (as Kratos falls back to JSON)."""
    for entry in accept.split(","):
        kind = media_type(entry)
        if kind in PROTOBUF_TYPES:
            return Codec(kind, True)
        if kind == JSON:
            return JSON_CODEC
    return JSON_CODEC


# Per message type: its message-typed fields (json name, proto name, repeated or map, map value is a message),
# leaving out oneof members and well-known types (their JSON is not an object of fields).
_MessageFields = list[tuple[str, str, bool, bool]]
_MESSAGE_FIELDS: dict[str, _MessageFields] = {}


def _message_fields(descriptor: Any) -> _MessageFields:
    fields = _MESSAGE_FIELDS.get(descriptor.full_name)
    if fields is None:
        fields = []
        for field in descriptor.fields:
            kind = field.message_type
            if kind is None or field.containing_oneof is not None or kind.full_name.startswith("google.protobuf."):
                continue
            is_map = kind.GetOptions().map_entry
            value_is_message = is_map and kind.fields_by_name["value"].message_type is not None
            if is_map and not value_is_message:
                continue
            fields.append((field.json_name, field.name, field.is_repeated, is_map))
        _MESSAGE_FIELDS[descriptor.full_name] = fields
    return fields


def _emit_unset_messages(message: Message, document: dict[str, Any]) -> None:
    """What Go's protojson EmitUnpopulated adds to MessageToDict's output: ``null`` for unset message fields."""
    for json_name, name, repeated, is_map in _message_fields(message.DESCRIPTOR):
        if is_map:
            for key, value in getattr(message, name).items():
                _emit_unset_messages(value, document[json_name][str(key)])
        elif repeated:
            for item, shown in zip(getattr(message, name), document[json_name], strict=True):
                _emit_unset_messages(item, shown)
        elif message.HasField(name):
            _emit_unset_messages(getattr(message, name), document[json_name])
        else:
            document[json_name] = None


def to_json(message: Message) -> bytes:
    """protojson as Kratos writes it: every field present (unset messages as ``null``), lowerCamelCase names."""
    document = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    _emit_unset_messages(message, document)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def encode_reply(route: Route, reply: Message, codec: Codec) -> bytes:
    return reply.SerializeToString() if codec.protobuf else to_json(reply)


def error_body(code: grpc.StatusCode, message: str, trailing: Sequence[tuple[str, Any]]) -> errors_pb2.Status:
    """Kratos' errors.FromError: the HTTP status of the code, with the ErrorInfo's reason and metadata."""
    error = errors_pb2.Status(code=HTTP_STATUS.get(code, 500), message=message)
    details = next((v for k, v in trailing if k == "grpc-status-details-bin"), None)
    if isinstance(details, bytes):
        status = status_pb2.Status.FromString(details)
        info = error_details_pb2.ErrorInfo()
        for detail in status.details:
            if detail.Unpack(info):
                error.reason = info.reason
                error.metadata.update(info.metadata)
                break
    return error


# ------------------------------------------------------------------------------------------------
# calls through the interceptors


class _CallDetails(NamedTuple):
    """grpc.HandlerCallDetails for a call that came over HTTP."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class HttpCallContext:
    """The part of grpc.aio.ServicerContext that servicers and interceptors use, for a call over HTTP."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self._peer = peer
        self._metadata = metadata
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Sequence[tuple[str, Any]] = ()

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def details(self) -> str:
        return self._details

    def set_details(self, details: str) -> None:
        self._details = details

    def trailing_metadata(self) -> Sequence[tuple[str, Any]]:
        return self._trailing

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = metadata

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self._code, self._details, self._trailing = code, details, trailing_metadata
        raise grpc.aio.AbortError(details)

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def error(self) -> errors_pb2.Status | None:
        """The error the call ended with, as Kratos' HTTP error body; None when it succeeded."""
        if self._code in (None, grpc.StatusCode.OK):
            return None
        assert self._code is not None
        return error_body(self._code, self._details, self._trailing)


Behaviour = Callable[[Any, HttpCallContext], Awaitable[Any]]


class Invoker:
    """Runs one RPC the way the gRPC server would: through ``interceptors`` (outermost first) into the servicer.
    The reply is always the method's generated message (the gRPC server says how to get it from a handler that
    answers in a form of its own)."""

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor], route_table: Sequence[Route]) -> None:
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._as_message: dict[str, Callable[[Any], Message]] = {}
        for route in route_table:
            self._handlers[route.grpc_method] = grpc.unary_unary_rpc_method_handler(
                getattr(route.servicer, route.method.name)
            )
            if (as_message := reply_message(route.grpc_method)) is not None:
                self._as_message[route.grpc_method] = as_message

    async def _resolve(self, details: _CallDetails, depth: int = 0) -> grpc.RpcMethodHandler:
        if depth == len(self._interceptors):
            return self._handlers[details.method]

        async def continuation(inner: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return await self._resolve(details, depth + 1)

        return await self._interceptors[depth].intercept_service(continuation, details)  # type: ignore[arg-type]

    async def call(self, method: str, request: Any, context: HttpCallContext) -> Any:
        """The reply, or None when the call failed (``context.error()`` tells how)."""
        handler = await self._resolve(_CallDetails(method, context.invocation_metadata()))
        behaviour: Behaviour = handler.unary_unary
        try:
            reply = await behaviour(request, context)
        except grpc.aio.AbortError:
            return None
        as_message = self._as_message.get(method)
        return reply if as_message is None else as_message(reply)


def grpc_peer(host: str, port: int) -> str:
    """A socket peer written as gRPC writes it, so one client-address rule reads both transports."""
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
