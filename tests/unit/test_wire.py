"""EncryptBatch in wire form: replies written as bytes are exactly the protobuf encoding of the same reply, and
requests read by ``parse_encrypt_batch`` are exactly what the generated message reads, hostile encodings included."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from api.gen.kms.v1 import kms_pb2
from internal.biz.errors import DomainError, InvalidArgument, NotFound
from internal.service.status import domain_status_proto
from internal.service.wire import _varint, encode_encrypt_batch, parse_encrypt_batch


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


# ---- the request ----------------------------------------------------------------------------------------


def read(data: bytes) -> tuple[str, list[tuple[str, bytes, dict[str, str]]]] | str:
    """The request as the generated message reads it (or "DecodeError")."""
    try:
        request = kms_pb2.EncryptBatchRequest.FromString(data)
    except DecodeError:
        return "DecodeError"
    return request.key_name, [(i.field, i.plaintext, dict(i.context)) for i in request.items]


def parsed(data: bytes) -> tuple[str, list[tuple[str, bytes, dict[str, str]]]] | str:
    """The request as ``parse_encrypt_batch`` reads it (or "DecodeError")."""
    try:
        request = parse_encrypt_batch(data)
    except DecodeError:
        return "DecodeError"
    return request.key_name, [(i.field, i.plaintext, dict(i.context)) for i in request.items]


def tagged(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + (_varint(len(payload)) if wire_type == 2 else b"") + payload


def entry(key: str, value: str) -> bytes:
    return tagged(3, 2, tagged(1, 2, key.encode()) + tagged(2, 2, value.encode()))


def batch(*items: bytes, key_name: str = "") -> bytes:
    return b"".join(tagged(1, 2, item) for item in items) + (tagged(2, 2, key_name.encode()) if key_name else b"")


def item(field: str, plaintext: bytes, context: dict[str, str] | None = None) -> bytes:
    return kms_pb2.EncryptItem(field=field, plaintext=plaintext, context=context or {}).SerializeToString()


FIELD_FIRST = tagged(1, 2, b"users.email")
HAND_MADE = {
    "plaintext-lengths": batch(*(item("f", os.urandom(n), {"t": "1"}) for n in (0, 1, 126, 127, 128, 16_383, 16_384))),
    "fields-and-contexts-change": batch(
        item("a", b"1", {"t": "1"}), item("a", b"2", {"t": "1"}), item("b", b"3", {"t": "1"}),
        item("b", b"4", {"t": "2"}), item("b", b"5"), item("b", b"6", {"t": "2"}), item("a", b"7", {"t": "1"}),
        key_name="orders",
    ),
    "plaintext-first": batch(*(tagged(2, 2, p) + FIELD_FIRST + entry("t", "1") for p in (b"xy", b"zw", b"uv"))),
    "context-between": batch(
        *(FIELD_FIRST + entry("a", "1") + tagged(2, 2, p) + entry("b", "2") for p in (b"1", b"9"))
    ),
    "duplicate-keys": batch(*(FIELD_FIRST + tagged(2, 2, p) + entry("k", "1") + entry("k", "2") for p in (b"1", b"2"))),
    "two-plaintexts": batch(*(FIELD_FIRST + tagged(2, 2, b"first") + tagged(2, 2, p) for p in (b"1", b"2", b"3"))),
    "unknown-fields": batch(*(FIELD_FIRST + tagged(9, 0, b"\x05") + tagged(2, 2, p) for p in (b"1", b"22", b"333"))),
    "non-minimal-length": batch(
        FIELD_FIRST + tagged(2, 2, b"ab"), FIELD_FIRST + b"\x12\x82\x00ab", FIELD_FIRST + tagged(2, 2, b"cd")
    ),
    "plaintext-as-varint": batch(FIELD_FIRST + tagged(2, 2, b"ab"), FIELD_FIRST + tagged(2, 0, b"\x07")),
    "tail-that-looks-alike": batch(
        item("f", b"aaaa", {"t": "1"}), item("f", b"aa", {"t": "1"}) + entry("t", "1"), item("f", b"bbbb", {"t": "1"})
    ),
    "invalid-utf8-field": batch(item("f", b"1"), tagged(1, 2, b"\xff\xfe") + tagged(2, 2, b"2")),
    "invalid-utf8-in-a-look-alike": batch(
        FIELD_FIRST + tagged(2, 2, b"12") + entry("t", "1"),
        FIELD_FIRST + tagged(2, 2, b"12") + tagged(3, 2, tagged(1, 2, b"t") + tagged(2, 2, b"\xff")),
    ),
    "truncated": batch(item("f", b"1"), item("f", b"2"))[:-1],
    "empty": b"",
}


@pytest.mark.parametrize("data", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_requests_read_as_the_generated_message_reads_them(data: bytes) -> None:
    assert parsed(data) == read(data)


def test_items_that_differ_only_in_plaintext_share_their_field_and_context() -> None:
    """What lets the sealer see at once that an item's binding is the previous item's."""
    data = batch(*(item("users.email", os.urandom(32), {"tenant": "t", "table": "users"}) for _ in range(50)))
    items = parse_encrypt_batch(data).items
    assert len({id(i.context) for i in items}) == 1 and len({id(i.field) for i in items}) == 1
    assert [i.plaintext for i in items] == [i.plaintext for i in kms_pb2.EncryptBatchRequest.FromString(data).items]


_TEXT = st.text(alphabet="ab\u00e9\U0001f600", max_size=3)
_ITEMS = st.lists(
    st.builds(
        item, st.sampled_from(["f", "g", "\u00e9"]), st.binary(max_size=140),
        st.dictionaries(_TEXT, _TEXT, max_size=3),
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(items=_ITEMS, repeats=st.integers(1, 3), cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255))))
def test_any_request_even_a_damaged_one_reads_as_the_generated_message_reads_it(
    items: list[bytes], repeats: int, cuts: list[tuple[int, int]]
) -> None:
    """Real batches (items repeated, as callers send them), then the same bytes with some of them overwritten."""
    data = bytearray(batch(*(i for i in items for _ in range(repeats))))
    assert parsed(bytes(data)) == read(bytes(data))
    for where, byte in cuts:
        if data:
            data[where % len(data)] = byte
    assert parsed(bytes(data)) == read(bytes(data))
