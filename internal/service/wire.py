"""EncryptBatch's request and reply in their wire form: the batch hot path, the one RPC whose speed is counted
per item.

The reply is written straight as protobuf wire bytes: filling 1,000 ``EncryptResult`` messages and serializing
them costs about twice the CPU of writing their bytes (0.3 vs 0.15 µs per item, measured). The bytes are exactly
what ``EncryptBatchReply.SerializeToString()`` gives (tested), so clients see no difference.

The request is read by ``parse_encrypt_batch``. A batch's items nearly always share their field and context, and
reading each item's protobuf map (then comparing it with the previous item's) cost more than its encryption. So
each item's encoded bytes are compared with the previous item's, field and context included, and only the
plaintext is cut out when nothing else differs: items that share their encoded field and context share one
``str`` and one dict, which the sealer recognises at once. Any other item is parsed as the generated message;
what is parsed is exactly what ``EncryptBatchRequest.FromString`` gives (tested, hostile encodings included).

The gRPC server registers EncryptBatch with this parser and a serializer that sends the reply's bytes as they
are (internal.server.grpc); nothing else on the gRPC path knows of these forms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from api.gen.kms.v1 import kms_pb2
from internal.biz.errors import DomainError
from internal.service.status import domain_status_proto

_LENGTH_DELIMITED, _VARINT = 2, 0


def _tag(message: Any, field: str, wire_type: int) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_RESULTS = _tag(kms_pb2.EncryptBatchReply, "results", _LENGTH_DELIMITED)
_ALGORITHM = _tag(kms_pb2.EncryptBatchReply, "algorithm", _LENGTH_DELIMITED)
_CIPHERTEXT = _tag(kms_pb2.EncryptResult, "ciphertext", _LENGTH_DELIMITED)
_KEY_VERSION = _tag(kms_pb2.EncryptResult, "key_version", _VARINT)


# ---- the request --------------------------------------------------------------------------------------


def _items_as_bytes() -> Any:
    """A message with EncryptBatchRequest's fields, its items left as their encoded bytes (a length-delimited
    field reads the same either way)."""
    fields = kms_pb2.EncryptBatchRequest.DESCRIPTOR.fields_by_name
    proto = descriptor_pb2.FileDescriptorProto(name="authkms/wire/encrypt_batch.proto", package="authkms.wire")
    proto.syntax = "proto3"
    message = proto.message_type.add(name="EncryptBatchRequestItems")
    kind = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="items", number=fields["items"].number, type=kind.TYPE_BYTES, label=kind.LABEL_REPEATED)
    message.field.add(
        name="key_name", number=fields["key_name"].number, type=kind.TYPE_STRING, label=kind.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("authkms.wire.EncryptBatchRequestItems"))


_REQUEST_ITEMS = _items_as_bytes()
_PLAINTEXT_NUMBER = kms_pb2.EncryptItem.DESCRIPTOR.fields_by_name["plaintext"].number
_PLAINTEXT = _tag(kms_pb2.EncryptItem, "plaintext", _LENGTH_DELIMITED)
# An item worth a template has a field, a plaintext and at most 64 context entries (more fail validation): reading
# further would only let a hostile item cost more.
_TEMPLATE_MAX_FIELDS = 70


class BatchItem(NamedTuple):  # a tuple: the cheapest object to make a thousand of per call
    """One item of a parsed EncryptBatch request; items with the same encoded field and context share them."""

    field: str
    plaintext: bytes
    context: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ParsedEncryptBatch:
    """What ``parse_encrypt_batch`` gives: an EncryptBatchRequest's fields, each item a ``BatchItem`` or (when it
    differs from the one before in more than its plaintext) a generated ``EncryptItem``."""

    key_name: str
    items: list[Any]


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _plaintext_span(raw: bytes) -> tuple[int, int] | None:
    """Where an encoded item's plaintext field lies (tag to end), if it has exactly one; else None."""
    i, end, span, fields = 0, len(raw), None, 0
    try:
        while i < end:
            fields += 1
            if fields > _TEMPLATE_MAX_FIELDS:
                return None
            start = i
            key, i = _read_varint(raw, i)
            wire_type = key & 7
            if wire_type == _LENGTH_DELIMITED:
                length, i = _read_varint(raw, i)
                i += length
            elif wire_type == _VARINT:
                i = _read_varint(raw, i)[1]
            elif wire_type in (1, 5):  # fixed 64 / 32 bits
                i += 8 if wire_type == 1 else 4
            else:  # groups: never in an item
                return None
            if key >> 3 == _PLAINTEXT_NUMBER:
                if span is not None or wire_type != _LENGTH_DELIMITED:
                    return None
                span = (start, i)
    except IndexError:
        return None
    return span if i == end else None


class _Template:
    """An item's encoded bytes around its plaintext: another item is the same item but for its plaintext exactly
    when it is ``head`` + the plaintext's tag and minimal length + the plaintext + ``tail``."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail = head, tail
        self.prefixes: dict[int, bytes | None] = {}  # an item's encoded length → all that precedes its plaintext

    def prefix(self, size: int) -> bytes | None:
        """What precedes the plaintext in an item of ``size`` encoded bytes (one plaintext length fits it)."""
        rest = size - len(self.head) - len(_PLAINTEXT) - len(self.tail)  # the length varint + the plaintext
        prefix = None
        for width in range(1, 11):
            length = rest - width
            if length >= 0 and len(_varint(length)) == width:
                prefix = self.head + _PLAINTEXT + _varint(length)
                break
        self.prefixes[size] = prefix
        return prefix


_UNSEEN = b"unseen"  # a marker, compared by identity


def parse_encrypt_batch(data: bytes) -> ParsedEncryptBatch:
    """An EncryptBatchRequest, read as ``EncryptBatchRequest.FromString`` reads it (DecodeError alike)."""
    request = _REQUEST_ITEMS.FromString(data)
    items: list[Any] = []
    append, parse_item, new_item = items.append, kms_pb2.EncryptItem.FromString, tuple.__new__
    template: _Template | None = None
    prefixes: dict[int, bytes | None] = {}
    tail, tail_size, field = b"", 0, ""  # the template's, while there is one
    context: dict[str, str] = {}
    for raw in request.items:
        if template is not None:
            size = len(raw)
            prefix = prefixes.get(size, _UNSEEN)
            if prefix is _UNSEEN:
                prefix = template.prefix(size)
            if prefix is not None and raw.startswith(prefix) and raw.endswith(tail):
                append(new_item(BatchItem, (field, raw[len(prefix) : size - tail_size], context)))
                continue
        item = parse_item(raw)
        span = _plaintext_span(raw)
        if span is None:
            template = None
            append(item)
            continue
        template = _Template(raw[: span[0]], raw[span[1] :])
        prefixes, tail, tail_size = template.prefixes, template.tail, len(template.tail)
        field, context = item.field, dict(item.context)
        append(BatchItem(field, item.plaintext, context))
    return ParsedEncryptBatch(request.key_name, items)


# ---- the reply ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedReply:
    """A reply already in wire form. ``items`` counts its results by key version (0: the item failed), for
    the metrics, which would otherwise have to read the bytes back."""

    wire: bytes
    items: dict[int, int]


def encode_encrypt_batch(results: Sequence[bytes | DomainError], key_version: int, algorithm: str) -> EncodedReply:
    """``EncryptBatchReply`` bytes: per item its ciphertext and key version, or its error as ``status``."""
    tail = _KEY_VERSION + _varint(key_version)
    heads: dict[int, bytes] = {}  # ciphertext length → the bytes before it (all items of a batch share a few)
    parts: list[bytes] = []
    append = parts.append
    failed = 0
    for result in results:
        if isinstance(result, DomainError):
            item = kms_pb2.EncryptResult(status=domain_status_proto(result)).SerializeToString()
            append(_RESULTS + _varint(len(item)) + item)
            failed += 1
            continue
        head = heads.get(len(result))
        if head is None:
            inner = len(_CIPHERTEXT) + len(_varint(len(result))) + len(result) + len(tail)
            head = heads[len(result)] = _RESULTS + _varint(inner) + _CIPHERTEXT + _varint(len(result))
        append(head + result + tail)
    if algorithm:
        encoded = algorithm.encode()
        append(_ALGORITHM + _varint(len(encoded)) + encoded)
    counts = {version: n for version, n in ((key_version, len(results) - failed), (0, failed)) if n}
    return EncodedReply(b"".join(parts), counts)
