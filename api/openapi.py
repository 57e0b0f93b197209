"""The OpenAPI 3 document of the HTTP/JSON API, generated from the protos (``python -m api.generate`` writes it
to ``api/openapi.yaml``; ``--check`` fails when it is stale).

It follows the same descriptors the server builds its route table from: one operation per ``google.api.http``
binding, path variables and (for bodiless routes) query parameters from the request message, the request
message as the body for ``body: "*"``, the reply message for 200 and Kratos' error body (``errors.v1.Status``)
for every other status. Schemas are the protojson mapping: lowerCamelCase names, 64-bit integers as decimal
strings, bytes as base64, enums by name. Descriptions are the proto comments.

Security: every kms.v1 operation takes a service credential; an auth.v1 operation takes an access token when
its comment says "Requires an access token" (the proto convention for it), and a service credential when it
says "Requires a service credential" (IntrospectToken).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto
Locations = dict[tuple[int, ...], str]  # source path -> leading comment
_VERBS = ("get", "put", "post", "delete", "patch")
ERROR_SCHEMA = "errors.v1.Status"
_INTEGER = {"type": "integer", "format": "int32"}
_UNSIGNED = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldProto.TYPE_INT32: _INTEGER,
    FieldProto.TYPE_SINT32: _INTEGER,
    FieldProto.TYPE_SFIXED32: _INTEGER,
    FieldProto.TYPE_UINT32: _UNSIGNED,
    FieldProto.TYPE_FIXED32: _UNSIGNED,
    FieldProto.TYPE_INT64: _INT64,
    FieldProto.TYPE_SINT64: _INT64,
    FieldProto.TYPE_SFIXED64: _INT64,
    FieldProto.TYPE_UINT64: _UINT64,
    FieldProto.TYPE_FIXED64: _UINT64,
    FieldProto.TYPE_DOUBLE: {"type": "number"},
    FieldProto.TYPE_FLOAT: {"type": "number"},
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# google.protobuf.Any in protojson: the type URL plus the packed message's own fields.
_ANY = {
    "type": "object",
    "properties": {"@type": {"type": "string"}},
    "additionalProperties": True,
    "description": "A packed message: its type URL in @type, then its fields.",
}
_JWKS = {
    "type": "object",
    "required": ["keys"],
    "properties": {"keys": {"type": "array", "items": {"type": "object", "additionalProperties": True}}},
    "description": "RFC 7517 JSON Web Key Set: the public keys that verify access tokens.",
}


def _comment(locations: dict[tuple[int, ...], str], path: tuple[int, ...]) -> str:
    return locations.get(path, "")


class _Catalog:
    """Every message and enum of the descriptor set by full name, with the comments of our own files."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, Locations, tuple[int, ...]]] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.files = list(files.file)
        self.comments: dict[str, dict[tuple[int, ...], str]] = {}
        for file in self.files:
            locations = {
                tuple(loc.path): " ".join(loc.leading_comments.split()) for loc in file.source_code_info.location
            }
            self.comments[file.name] = locations
            for index, message in enumerate(file.message_type):
                self._add(f"{file.package}.{message.name}", message, locations, (4, index))
            for enum in file.enum_type:
                self.enums[f"{file.package}.{enum.name}"] = enum

    def _add(
        self,
        name: str,
        message: descriptor_pb2.DescriptorProto,
        locations: dict[tuple[int, ...], str],
        path: tuple[int, ...],
    ) -> None:
        self.messages[name] = (message, locations, path)
        for index, nested in enumerate(message.nested_type):
            self._add(f"{name}.{nested.name}", nested, locations, (*path, 3, index))
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum


class _Schemas:
    def __init__(self, catalog: _Catalog) -> None:
        self._catalog = catalog
        self.components: dict[str, Any] = {}

    def ref(self, full_name: str) -> dict[str, Any]:
        if full_name == "google.protobuf.Any":
            self.components.setdefault(full_name, _ANY)
        elif full_name not in self.components:
            self.components[full_name] = {}  # placeholder first: messages may refer to themselves
            self.components[full_name] = self._message(full_name)
        return {"$ref": f"#/components/schemas/{full_name}"}

    def field(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        type_name = field.type_name.lstrip(".")
        if field.type == FieldProto.TYPE_MESSAGE:
            entry = self._catalog.messages[type_name][0]
            if entry.options.map_entry:
                return {"type": "object", "additionalProperties": self.field(entry.field[1])}
            single = self.ref(type_name)
            if field.label != FieldProto.LABEL_REPEATED and not field.HasField("oneof_index"):
                # Unset, it is written as null (protojson EmitUnpopulated).
                return {"allOf": [single], "nullable": True}
        elif field.type == FieldProto.TYPE_ENUM:
            single = {"type": "string", "enum": [value.name for value in self._catalog.enums[type_name].value]}
        else:
            single = dict(_SCALARS[field.type])
        if field.label == FieldProto.LABEL_REPEATED:
            return {"type": "array", "items": single}
        return single

    def _message(self, full_name: str) -> dict[str, Any]:
        message, locations, path = self._catalog.messages[full_name]
        properties = {}
        for index, field in enumerate(message.field):
            schema = self.field(field)
            description = _comment(locations, (*path, 2, index))
            if description and "$ref" not in schema:
                schema = {**schema, "description": description}
            properties[field.json_name] = schema
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        description = _comment(locations, path)
        if description:
            schema["description"] = description
        return schema


def _bindings(method: descriptor_pb2.MethodDescriptorProto) -> Iterator[Any]:
    if not method.options.HasExtension(annotations_pb2.http):
        return
    rule = method.options.Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def _template(rule: Any) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        return rule.custom.kind.lower(), rule.custom.path
    return kind, getattr(rule, kind)


def _path_and_variables(template: str) -> tuple[str, list[str]]:
    variables: list[str] = []
    out = []
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        inner, _, rest = tail.partition("}")
        name = inner.split("=", 1)[0].strip()
        variables.append(name)
        out.append(f"{head}{{{name}}}")
    out.append(rest)
    return "".join(out), variables


def _query_parameters(
    catalog: _Catalog, schemas: _Schemas, message_name: str, bound: set[str], prefix: str = ""
) -> list[dict[str, Any]]:
    message, locations, path = catalog.messages[message_name]
    parameters = []
    for index, field in enumerate(message.field):
        name = prefix + field.name
        if name in bound:
            continue
        if field.type == FieldProto.TYPE_MESSAGE:
            nested = catalog.messages[field.type_name.lstrip(".")][0]
            if field.label != FieldProto.LABEL_REPEATED and not nested.options.map_entry:
                parameters += _query_parameters(catalog, schemas, field.type_name.lstrip("."), bound, name + ".")
            continue
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schemas.field(field)}
        description = _comment(locations, (*path, 2, index))
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _path_parameter(catalog: _Catalog, schemas: _Schemas, message_name: str, dotted: str) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    for name in parents:
        message = catalog.messages[message_name][0]
        message_name = next(f.type_name.lstrip(".") for f in message.field if f.name == name)
    message = catalog.messages[message_name][0]
    field = next(f for f in message.field if f.name == leaf)
    return {"name": dotted, "in": "path", "required": True, "schema": schemas.field(field)}


def _security(service_name: str, comment: str) -> list[dict[str, list[str]]] | None:
    needs_bearer = "Requires an access token" in comment or "Requires a service credential" in comment
    if service_name.startswith("kms.") or needs_bearer:
        return [{"bearer": []}]
    return None


def _responses(schemas: _Schemas, reply: str) -> dict[str, Any]:
    def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    return {
        "200": json_body(schemas.ref(reply), "OK (protojson, every field present)"),
        "default": json_body(
            schemas.ref(ERROR_SCHEMA), "Error: HTTP status = Kratos mapping of the gRPC code, reason from ErrorReason"
        ),
    }


def build(files: descriptor_pb2.FileDescriptorSet, services: list[str], version: str) -> dict[str, Any]:
    """The OpenAPI document for ``services`` (full names), in route order of the protos."""
    catalog = _Catalog(files)
    schemas = _Schemas(catalog)
    paths: dict[str, dict[str, Any]] = {}
    tags = []
    for file in catalog.files:
        locations = catalog.comments[file.name]
        for service_index, service in enumerate(file.service):
            service_name = f"{file.package}.{service.name}"
            if service_name not in services:
                continue
            tags.append({"name": service_name, "description": _comment(locations, (6, service_index))})
            for method_index, method in enumerate(service.method):
                comment = _comment(locations, (6, service_index, 2, method_index))
                request, reply = method.input_type.lstrip("."), method.output_type.lstrip(".")
                for binding_index, rule in enumerate(_bindings(method)):
                    verb, template = _template(rule)
                    path, variables = _path_and_variables(template)
                    parameters = [_path_parameter(catalog, schemas, request, v) for v in variables]
                    operation: dict[str, Any] = {
                        "operationId": f"{service.name}_{method.name}" + (f"_{binding_index}" if binding_index else ""),
                        "tags": [service_name],
                        "summary": f"{service_name}.{method.name}",
                        "description": comment,
                    }
                    if rule.body:
                        body_schema = schemas.ref(request)
                        if rule.body != "*":
                            field = next(f for f in catalog.messages[request][0].field if f.name == rule.body)
                            body_schema = schemas.field(field)
                        operation["requestBody"] = {
                            "required": False,
                            "content": {"application/json": {"schema": body_schema}},
                        }
                    else:
                        parameters += _query_parameters(catalog, schemas, request, set(variables))
                    if parameters:
                        operation["parameters"] = parameters
                    security = _security(service_name, comment)
                    if security:
                        operation["security"] = security
                    operation["responses"] = _responses(schemas, reply)
                    paths.setdefault(path, {})[verb] = operation
    paths["/.well-known/jwks.json"] = {
        "get": {
            "operationId": "Jwks_WellKnown",
            "tags": ["auth.v1.Auth"],
            "summary": "JWKS at its well-known address",
            "description": "The same keys as GetJwks, verbatim, with a Cache-Control max-age "
            "(server.http.jwks_max_age).",
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": _JWKS}}},
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": schemas.ref(ERROR_SCHEMA)}},
                },
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "authkms HTTP/JSON API",
            "version": version,
            "description": "auth.v1.Auth and kms.v1.KMS over HTTP/JSON, transcoded from their google.api.http "
            "annotations with Kratos v2 conventions. Generated from api/proto by `python -m api.generate`; "
            "do not edit.",
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "auth.v1: an access token from Login (IntrospectToken: a service credential "
                    "with auth.introspect); kms.v1: a service credential (akms_…).",
                }
            },
        },
    }
