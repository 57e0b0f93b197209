"""EncryptBatch's reply written straight as protobuf wire bytes: the batch hot path.

Filling 1,000 ``EncryptResult`` messages and serializing them costs about twice the CPU of writing their
bytes (0.3 vs 0.15 µs per item, measured), and EncryptBatch is the one RPC whose speed is counted per
item. The bytes are exactly what ``EncryptBatchReply.SerializeToString()`` gives (tested), so clients
see no difference. The gRPC server registers EncryptBatch with a serializer that sends them as they are
(internal.server.grpc); nothing else on the gRPC path knows of this reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
