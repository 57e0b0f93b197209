"""EncryptBatch replies written as wire bytes are exactly the protobuf encoding of the same reply."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from api.gen.kms.v1 import kms_pb2
from internal.biz.errors import DomainError, InvalidArgument, NotFound
from internal.service.status import domain_status_proto
from internal.service.wire import encode_encrypt_batch


def built(results: list[bytes | DomainError], version: int, algorithm: str) -> bytes:
    """The same reply filled in as messages: the reference."""
    reply = kms_pb2.EncryptBatchReply(algorithm=algorithm)
    for result in results:
        if isinstance(result, DomainError):
            reply.results.add(status=domain_status_proto(result))
        else:
            reply.results.add(ciphertext=result, key_version=version)
    return reply.SerializeToString()


BAD = InvalidArgument("VALIDATION_ERROR", "plaintext exceeds 65536 bytes", {"limit": "65536"})
GONE = NotFound("KEY_NOT_FOUND", "data key version 9 not found")


@pytest.mark.parametrize(
    ("results", "version"),
    [
        ([], 1),
        ([os.urandom(65)] * 3, 1),
        ([os.urandom(n) for n in (1, 100, 127, 128, 200, 16_383, 16_384, 70_000)], 127),
        ([os.urandom(65), BAD, os.urandom(65), GONE], 128),
        ([BAD, BAD], 300_000),
        ([os.urandom(40) for _ in range(1000)], 2**31 - 1),
    ],
    ids=["empty", "same-size", "varint-edges", "mixed", "all-failed", "large-batch"],
)
@pytest.mark.parametrize("algorithm", ["AES_256_GCM", ""])
def test_encoding_equals_protobuf(results: list[bytes | DomainError], version: int, algorithm: str) -> None:
    encoded = encode_encrypt_batch(results, version, algorithm)
    assert encoded.wire == built(results, version, algorithm)
    # The counts the metrics use are what reading every result back would give.
    parsed = kms_pb2.EncryptBatchReply.FromString(encoded.wire).results
    assert encoded.items == Counter(r.key_version for r in parsed)


def test_failed_items_carry_their_error_details() -> None:
    reply = kms_pb2.EncryptBatchReply.FromString(encode_encrypt_batch([os.urandom(65), BAD], 3, "AES_256_GCM").wire)
    ok, failed = reply.results
    assert not ok.HasField("status") and ok.key_version == 3
    assert failed.status.code == 3 and failed.status.message == BAD.message and failed.key_version == 0


def _fields(descriptor: object) -> set[str]:
    return {f.name for f in descriptor.fields}  # type: ignore[attr-defined]


def test_every_field_of_the_reply_is_written() -> None:
    """A field added to EncryptBatchReply or EncryptResult must be written by the encoder too: an item of each
    kind (sealed, failed) sets every field the encoder knows, and together they set every field there is."""
    ok, bad = os.urandom(65), BAD
    reply = kms_pb2.EncryptBatchReply.FromString(encode_encrypt_batch([ok, bad], 7, "AES_256_GCM").wire)
    assert {f.name for f, _ in reply.ListFields()} == _fields(kms_pb2.EncryptBatchReply.DESCRIPTOR)
    written = {f.name for item in reply.results for f, _ in item.ListFields()}
    assert written == _fields(kms_pb2.EncryptResult.DESCRIPTOR)
    expected = kms_pb2.EncryptBatchReply(algorithm="AES_256_GCM")
    expected.results.add(ciphertext=ok, key_version=7)
    expected.results.add(status=domain_status_proto(bad))
    assert reply.SerializeToString() == expected.SerializeToString()
