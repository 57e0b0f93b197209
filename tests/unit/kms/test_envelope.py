"""Envelope and AEAD properties: round trips, tamper detection, key-name and context binding, the format 1
envelopes of the time before named keys, hostile input."""

from __future__ import annotations

import functools
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.gen.kms.v1 import kms_pb2
from internal.biz.errors import DomainError, InvalidArgument, NotFound
from internal.biz.kms_cipher import DecryptItem, EncryptItem
from internal.pkg.kms import envelope
from internal.pkg.kms.envelope import (
    HEADER_SIZE,
    MAGIC,
    MIN_CIPHERTEXT_SIZE,
    Algorithm,
    DataKey,
    Sealer,
    algorithm_for_new_key,
    associated_data,
    open_many,
    open_sealed,
    parse_header,
    seal,
)
from tests.unit.kms.stack import seal_legacy

ALGORITHMS = [Algorithm.AES_256_GCM, Algorithm.CHACHA20_POLY1305, Algorithm.SM4_GCM]
KEYS = {alg: DataKey("orders", 7, alg, os.urandom(32)) for alg in ALGORITHMS}
KEY_MATERIAL = os.urandom(32)
contexts = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6)
fields = st.text(min_size=1, max_size=40)


def assert_invalid(exc: pytest.ExceptionInfo[InvalidArgument]) -> None:
    assert exc.value.reason == "CIPHERTEXT_INVALID"


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=4096), field=fields, context=contexts)
def test_round_trip(algorithm: Algorithm, plaintext: bytes, field: str, context: dict[str, str]) -> None:
    key = KEYS[algorithm]
    sealed = seal(key, field, plaintext, context)
    assert len(sealed) == HEADER_SIZE + len(plaintext) + 16
    header = parse_header(sealed)
    assert (header.key_version, header.algorithm) == (7, algorithm)
    assert open_sealed(key, field, sealed, dict(reversed(list(context.items())))) == plaintext


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_fresh_nonce_every_time(algorithm: Algorithm) -> None:
    sealed = {seal(KEYS[algorithm], "f", b"same", {}) for _ in range(200)}
    assert len(sealed) == 200
    assert len({parse_header(s).nonce for s in sealed}) == 200


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_every_byte_tampered_is_rejected(algorithm: Algorithm) -> None:
    key = KEYS[algorithm]
    sealed = seal(key, "email", b"alice@example.com", {"user_id": "1"})
    for i in range(len(sealed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= flip
            with pytest.raises(InvalidArgument) as exc:
                open_sealed(key, "email", bytes(tampered), {"user_id": "1"})
            assert_invalid(exc)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_truncation_and_extension_are_rejected(algorithm: Algorithm) -> None:
    key = KEYS[algorithm]
    sealed = seal(key, "f", b"value", {})
    for n in range(len(sealed)):
        with pytest.raises(InvalidArgument) as exc:
            open_sealed(key, "f", sealed[:n], {})
        assert_invalid(exc)
    with pytest.raises(InvalidArgument) as exc:
        open_sealed(key, "f", sealed + b"\x00", {})
    assert_invalid(exc)


def test_wrong_field_or_context_is_rejected() -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    sealed = seal(key, "email", b"alice@example.com", {"table": "users", "user_id": "1"})
    for field, context in [
        ("phone", {"table": "users", "user_id": "1"}),
        ("email", {"table": "users", "user_id": "2"}),
        ("email", {"table": "users"}),
        ("email", {"table": "users", "user_id": "1", "extra": ""}),
        ("email", {}),
    ]:
        with pytest.raises(InvalidArgument) as exc:
            open_sealed(key, field, sealed, context)
        assert_invalid(exc)


def test_swapped_user_values_do_not_decrypt() -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    alice = seal(key, "email", b"alice@example.com", {"user_id": "1"})
    bob = seal(key, "email", b"bob@example.com", {"user_id": "2"})
    with pytest.raises(InvalidArgument):
        open_sealed(key, "email", alice, {"user_id": "2"})
    with pytest.raises(InvalidArgument):
        open_sealed(key, "email", bob, {"user_id": "1"})


@pytest.mark.parametrize("key_name", ["orders", None], ids=["format2", "format1"])
def test_associated_data_is_unambiguous(key_name: str | None) -> None:
    prefix = b"\xa7\x02\x00\x00\x00\x01\x01"
    ad = functools.partial(associated_data, prefix, key_name)
    assert ad("a", {"b": "c"}) != ad("ab", {"": "c"})
    assert ad("f", {"a": "bc"}) != ad("f", {"ab": "c"})
    assert ad("f", {"a": "b", "c": "d"}) != ad("f", {"a": "b\x00c"})
    assert ad("f", {"x": "1", "y": "2"}) == ad("f", {"y": "2", "x": "1"})


def test_associated_data_binds_the_key_name_unambiguously() -> None:
    prefix = b"\xa7\x02\x00\x00\x00\x01\x01"
    encodings = {
        associated_data(prefix, "orders", "f", {}),
        associated_data(prefix, "orders.eu", "f", {}),
        associated_data(prefix, "order", "sf", {}),
        associated_data(prefix, "default", "f", {}),
        associated_data(prefix, None, "f", {}),
    }
    assert len(encodings) == 5


def test_same_material_and_version_under_another_key_name_does_not_open() -> None:
    material = os.urandom(32)
    for algorithm in ALGORITHMS:
        sealed = seal(DataKey("orders", 1, algorithm, material), "f", b"v", {"k": "v"})
        for other in ("payments", "orders.eu", "default", "authkms.users"):
            with pytest.raises(InvalidArgument) as exc:
                open_sealed(DataKey(other, 1, algorithm, material), "f", sealed, {"k": "v"})
            assert_invalid(exc)
        assert open_sealed(DataKey("orders", 1, algorithm, material), "f", sealed, {"k": "v"}) == b"v"


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_format1_envelopes_open_only_under_default(algorithm: Algorithm) -> None:
    material = os.urandom(32)
    default = DataKey("default", 3, algorithm, material)
    legacy = seal_legacy(default, "email", b"alice@example.com", {"user_id": "1"})
    assert envelope.is_legacy(legacy) and parse_header(legacy).format == 1
    assert open_sealed(default, "email", legacy, {"user_id": "1"}) == b"alice@example.com"
    assert open_many({3: default}, [DecryptItem("email", legacy, {"user_id": "1"})]) == [(b"alice@example.com", 3)]
    for name in ("orders", "authkms.users", "default.x"):
        with pytest.raises(InvalidArgument) as exc:
            open_sealed(DataKey(name, 3, algorithm, material), "email", legacy, {"user_id": "1"})
        assert_invalid(exc)
    for field, context in [("phone", {"user_id": "1"}), ("email", {"user_id": "2"})]:
        with pytest.raises(InvalidArgument):
            open_sealed(default, field, legacy, context)
    # The format byte is authenticated: neither format opens as the other.
    for sealed, fmt in ((legacy, 2), (seal(default, "email", b"x", {"user_id": "1"}), 1)):
        relabelled = bytearray(sealed)
        relabelled[1] = fmt
        with pytest.raises(InvalidArgument) as exc:
            open_sealed(default, "email", bytes(relabelled), {"user_id": "1"})
        assert_invalid(exc)
    assert not envelope.is_legacy(seal(default, "email", b"x", {}))


def test_key_of_another_version_or_algorithm_is_rejected() -> None:
    material = os.urandom(32)
    sealed = seal(DataKey("orders", 3, Algorithm.AES_256_GCM, material), "f", b"v", {})
    for other in (
        DataKey("orders", 4, Algorithm.AES_256_GCM, material),
        DataKey("orders", 3, Algorithm.CHACHA20_POLY1305, material),
    ):
        with pytest.raises(InvalidArgument) as exc:
            open_sealed(other, "f", sealed, {})
        assert_invalid(exc)


def test_header_edits_are_rejected_even_with_a_matching_key() -> None:
    # Changing the key version in the header and opening with a key of that version still fails: the
    # header is part of the associated data.
    material = os.urandom(32)
    sealed = bytearray(seal(DataKey("orders", 3, Algorithm.AES_256_GCM, material), "f", b"v", {}))
    struct.pack_into(">I", sealed, envelope.KEY_VERSION_OFFSET, 9)
    with pytest.raises(InvalidArgument):
        open_sealed(DataKey("orders", 9, Algorithm.AES_256_GCM, material), "f", bytes(sealed), {})


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_give_ciphertext_invalid(data: bytes) -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    try:
        open_sealed(key, "f", data, {})
    except DomainError as exc:
        assert exc.reason == "CIPHERTEXT_INVALID"
    else:
        pytest.fail("random bytes decrypted")


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.integers(0, 3),
    version=st.integers(0, 2**32 - 1),
    alg=st.integers(0, 255),
    body=st.binary(min_size=28, max_size=60),
    key_name=st.sampled_from(["orders", "default"]),
)
def test_random_bytes_with_our_magic_only_give_ciphertext_invalid(
    fmt: int, version: int, alg: int, body: bytes, key_name: str
) -> None:
    data = bytes([MAGIC, fmt]) + struct.pack(">IB", version, alg) + body
    try:
        parse_header(data)
    except InvalidArgument as exc:
        assert exc.reason == "CIPHERTEXT_INVALID"
    key = DataKey(key_name, 7, Algorithm.SM4_GCM, KEY_MATERIAL)
    with pytest.raises(DomainError) as opened:
        open_sealed(key, "f", data, {})
    assert opened.value.reason == "CIPHERTEXT_INVALID"


def test_minimum_size() -> None:
    assert MIN_CIPHERTEXT_SIZE == 35
    assert len(seal(KEYS[Algorithm.AES_256_GCM], "f", b"", {})) == MIN_CIPHERTEXT_SIZE


def test_cbc_is_refused_for_new_keys() -> None:
    with pytest.raises(InvalidArgument) as exc:
        algorithm_for_new_key("AES-256-CBC")
    assert exc.value.reason == "VALIDATION_ERROR"
    assert "AES-256-CBC" in exc.value.message and "refused" in exc.value.message
    with pytest.raises(InvalidArgument):
        algorithm_for_new_key("ROT13")
    with pytest.raises(ValueError):
        DataKey("default", 1, Algorithm.AES_256_CBC, os.urandom(32))
    assert algorithm_for_new_key("SM4-GCM") is Algorithm.SM4_GCM


def test_sm4_uses_a_derived_128_bit_key() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    material = os.urandom(32)
    sealed = seal(DataKey("orders", 1, Algorithm.SM4_GCM, material), "f", b"hello", {})
    sm4_key = HKDF(hashes.SHA256(), 16, None, b"authkms/kms/sm4-gcm/v1").derive(material)
    nonce, body, tag = sealed[7:19], sealed[19:-16], sealed[-16:]
    decryptor = Cipher(algorithms.SM4(sm4_key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(associated_data(sealed[:7], "orders", "f", {}))
    assert decryptor.update(body) + decryptor.finalize() == b"hello"


def test_invalid_bindings_are_validation_errors() -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    for field, context in [("", {}), ("x" * 129, {}), ("f", {"k": 1}), ("f", {str(i): "" for i in range(65)})]:
        with pytest.raises(InvalidArgument) as exc:
            envelope.validate_binding(field, context)  # type: ignore[arg-type]
        assert exc.value.reason == "VALIDATION_ERROR"
    with pytest.raises(InvalidArgument) as exc:
        seal(key, "f\ud800", b"", {})
    assert exc.value.reason == "VALIDATION_ERROR"


def test_data_key_repr_hides_material() -> None:
    material = os.urandom(32)
    text = repr(DataKey("orders", 1, Algorithm.AES_256_GCM, material))
    assert material.hex() not in text and "hidden" in text and "orders" in text


# Few distinct fields and contexts, so batches mix cache hits, misses and near-misses (same keys, other
# values; same size, other keys).
batch_fields = st.sampled_from(["email", "phone", "é"])
batch_contexts = st.sampled_from([{}, {"a": "1"}, {"a": "2"}, {"b": "1"}, {"a": "1", "b": "2"}, {"b": "2", "a": "1"}])


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
@pytest.mark.parametrize("as_proto", [False, True], ids=["dataclass", "proto"])
@settings(max_examples=40, deadline=None)
@given(items=st.lists(st.tuples(batch_fields, st.binary(max_size=64), batch_contexts), max_size=30))
def test_seal_many_matches_seal(
    algorithm: Algorithm, as_proto: bool, items: list[tuple[str, bytes, dict[str, str]]]
) -> None:
    """Batch sealing caches associated data per field + context; each envelope must still open with its own
    binding (through the one-value path) and with no other."""
    key = KEYS[algorithm]
    make = kms_pb2.EncryptItem if as_proto else EncryptItem
    sealed = Sealer(key).seal_many([make(field=f, plaintext=p, context=c) for f, p, c in items], 1024)
    assert len(sealed) == len(items)
    assert len({s[HEADER_SIZE - 12 : HEADER_SIZE] for s in sealed if isinstance(s, bytes)}) == len(items)  # nonces
    for (field, plaintext, context), ciphertext in zip(items, sealed, strict=True):
        assert isinstance(ciphertext, bytes)
        assert open_sealed(key, field, ciphertext, context) == plaintext
        for other in ({"a": "1", "b": "3"}, {"a": "3"}, {"c": "1"}):
            with pytest.raises(InvalidArgument) as exc:
                open_sealed(key, field, ciphertext, other)
            assert_invalid(exc)
    opened = open_many({key.version: key}, [DecryptItem(f, s, c) for (f, _, c), s in zip(items, sealed, strict=True)])  # type: ignore[arg-type]
    assert opened == [(p, key.version) for _, p, _ in items]


def test_seal_many_refuses_named_fields_item_by_item_and_leaves_contexts_alone() -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    refused = InvalidArgument("VALIDATION_ERROR", "reserved")
    items = [
        kms_pb2.EncryptItem(field="f", plaintext=b"1", context={"a": "1"}),
        kms_pb2.EncryptItem(field="reserved", plaintext=b"2", context={"a": "1"}),
        kms_pb2.EncryptItem(field="reserved", plaintext=b"3", context={"a": "1"}),
        kms_pb2.EncryptItem(field="f", plaintext=b"4", context={"a": "1"}),
        kms_pb2.EncryptItem(field="f", plaintext=b"5", context={"b": "1"}),  # same size, another key
        kms_pb2.EncryptItem(field="f", plaintext=b"6", context={"a": "1"}),
    ]
    results = Sealer(key).seal_many(items, 10, {"reserved": refused})
    assert results[1] is refused and results[2] is refused
    assert [dict(item.context) for item in items[3:]] == [{"a": "1"}, {"b": "1"}, {"a": "1"}]  # nothing inserted
    for index in (0, 3, 4, 5):
        sealed = results[index]
        assert isinstance(sealed, bytes)
        assert open_sealed(key, "f", sealed, dict(items[index].context)) == items[index].plaintext


def test_seal_many_fails_item_by_item() -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    items = [
        EncryptItem("f", b"ok", {"k": "v"}),
        EncryptItem("f", b"x" * 11, {"k": "v"}),  # over the limit
        EncryptItem("f", "text", {"k": "v"}),  # type: ignore[arg-type]
        EncryptItem("f", b"ok", {"k": 1}),  # type: ignore[dict-item]
        EncryptItem("f", b"ok", None),  # type: ignore[arg-type]
        EncryptItem("", b"ok"),
        EncryptItem("f", b"ok", {"k": "\ud800"}),  # not encodable as UTF-8
        EncryptItem("f", bytearray(b"ok"), {"k": "v"}),  # type: ignore[arg-type]
    ]
    results = Sealer(key).seal_many(items, 10)
    reasons = [r.reason if isinstance(r, DomainError) else "OK" for r in results]
    assert reasons == ["OK", "PLAINTEXT_TOO_LARGE"] + ["VALIDATION_ERROR"] * 5 + ["OK"]
    assert open_sealed(key, "f", results[-1], {"k": "v"}) == b"ok"  # type: ignore[arg-type]
    missing, unknown = NotFound("KEY_NOT_FOUND", "no such key"), bytearray(results[0])  # type: ignore[arg-type]
    unknown[2:6] = (9).to_bytes(4, "big")
    opened = open_many(
        {key.version: key, 9: missing},
        [
            DecryptItem("f", results[0], {"k": "v"}),  # type: ignore[arg-type]
            DecryptItem("f", results[0], {"k": "w"}),  # type: ignore[arg-type]
            DecryptItem("f", bytes(unknown), {"k": "v"}),
            DecryptItem("f", b"short", {}),
            DecryptItem("f", results[0][:-1] + bytes([results[0][-1] ^ 1]), {"k": "v"}),  # type: ignore[index]
        ],
    )
    assert opened[0] == (b"ok", key.version)
    assert opened[2] is missing
    assert [o.reason for o in opened[1:2] + opened[3:]] == ["CIPHERTEXT_INVALID"] * 3  # type: ignore[union-attr]


def test_associated_data_bytes_are_stable() -> None:
    """Stored ciphertexts were sealed with exactly these bytes: the encoding may be rewritten, never changed."""
    prefix = bytes.fromhex("a7010000000701")
    context = {"tenant": "bench", "table": "users", "é": "中"}
    # Format 1 (before named keys): no key name.
    assert associated_data(prefix, None, "users.email", context).hex() == (
        "617574686b6d732f6b6d732f61642f763100000007a70100000007010000000b75736572732e656d61696c00000003"
        "000000057461626c650000000575736572730000000674656e616e740000000562656e636800000002c3a900000003e4b8ad"
    )
    empty = "617574686b6d732f6b6d732f61642f763100000007a7010000000701000000016600000000"
    assert associated_data(prefix, None, "f", {}).hex() == empty
    # Format 2: its own domain ("authkms/kms/ad/v2"), then the header prefix, then the key name, then as before.
    prefix = bytes.fromhex("a7020000000701")
    assert associated_data(prefix, "orders", "f", {}).hex() == (
        "617574686b6d732f6b6d732f61642f763200000007a7020000000701000000066f7264657273000000016600000000"
    )


def test_sealer_cache_is_bounded_and_never_crosses_contexts() -> None:
    key = KEYS[Algorithm.AES_256_GCM]
    sealer = Sealer(key)
    for i in range(Sealer.MAX_CACHED_FIELDS + 10):
        sealer.seal(f"field-{i}", b"v", {})
    assert len(sealer._by_field) <= Sealer.MAX_CACHED_FIELDS
    contexts = [{"user_id": "1"}, {"user_id": "2"}, {"tenant": "1"}, {}, {"user_id": "1"}]
    sealed = [sealer.seal("email", b"same", c) for c in contexts]
    for context, ciphertext in zip(contexts, sealed, strict=True):
        assert open_sealed(key, "email", ciphertext, context) == b"same"
        for other in contexts:
            if other != context:
                with pytest.raises(InvalidArgument):
                    open_sealed(key, "email", ciphertext, other)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_named_key_version_from_a_prefix_alone(algorithm: Algorithm) -> None:
    # Storage hands over only the first PREFIX_SIZE bytes of each value; the version is read here.
    sealed = seal(DataKey("authkms.users", 12, algorithm, KEY_MATERIAL), "email", b"a@example.org", {})
    assert envelope.named_key_version(sealed[: envelope.PREFIX_SIZE]) == 12
    assert envelope.named_key_version(sealed) == parse_header(sealed).key_version == 12


def test_named_key_version_is_none_for_format_1_and_for_what_is_no_envelope() -> None:
    legacy = seal_legacy(KEYS[Algorithm.AES_256_GCM], "email", b"a@example.org", {})
    assert envelope.named_key_version(legacy[: envelope.PREFIX_SIZE]) is None
    current = seal(KEYS[Algorithm.AES_256_GCM], "f", b"v", {})[: envelope.PREFIX_SIZE]
    for bad in (b"", current[:-1], b"\x00" + current[1:], current[:-1] + b"\x09", current[:2] + bytes(4) + current[6:]):
        assert envelope.named_key_version(bad) is None
