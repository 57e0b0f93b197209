"""The one identifier normaliser (biz.identifiers) and the client-network keys of the lockout."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from internal.biz.errors import InvalidArgument
from internal.biz.identifiers import (
    classify,
    email_key,
    normalize_email,
    normalize_identifier,
    normalize_index_value,
    normalize_phone,
    normalize_username,
    skeleton,
    username_key,
)
from internal.biz.lockout import client_network


def test_email_in_nfd_and_nfc_is_one_address() -> None:
    nfc, nfd = unicodedata.normalize("NFC", "José@Example.org"), unicodedata.normalize("NFD", "José@Example.org")
    assert nfc != nfd
    assert normalize_email(nfd) == normalize_email(nfc) == unicodedata.normalize("NFC", "josé@example.org")
    assert normalize_identifier("email", f"  {nfd} ") == normalize_email(nfc)


def test_phone_is_e164_whatever_the_digits() -> None:
    assert normalize_phone("+86 138-1234-5678") == normalize_phone("＋８６１３８１２３４５６７８") == "+8613812345678"


def test_username_is_nfkc_then_the_ascii_rules() -> None:
    assert normalize_username("ａｌｉｃｅ") == "alice"
    for bad in ("аlice", "al", "1abc", "ali ce", "a" * 65):
        with pytest.raises(InvalidArgument) as err:
            normalize_username(bad)
        assert err.value.metadata == {"field": "username"}


@pytest.mark.parametrize("twin", ["ALICE", "ａlice", "a1ice", "ａ１ｉｃｅ"])
def test_confusable_usernames_share_a_key(twin: str) -> None:
    assert username_key(twin) == username_key("alice")


def test_different_usernames_keep_different_keys() -> None:
    assert username_key("alice") != username_key("alicia")
    assert username_key("modern") == username_key("rnodern")  # "m" and "rn" look alike (TR 39)
    assert username_key("b0b") == username_key("BOB")


@pytest.mark.parametrize("twin", ["аlice@example.org", "ａlice@example.org", "ALICE@EXAMPLE.ORG", "a1ice@example.org"])
def test_confusable_email_local_parts_share_a_key(twin: str) -> None:
    assert email_key(twin) == email_key("alice@example.org")
    assert email_key("alice@example.net") != email_key("alice@example.org")


def test_skeleton_is_tr39() -> None:
    assert skeleton("раураl") == "paypal"  # Cyrillic р, а, у
    assert skeleton("paypal") == "paypal"


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        normalize_identifier("name", "x")


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.7", "203.0.113.0/24"),
        ("::ffff:203.0.113.7", "203.0.113.0/24"),
        ("[2001:db8:1:2:3:4:5:6]", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", "unknown"),
    ],
)
def test_client_network_prefixes(address: str, network: str) -> None:
    assert client_network(address) == network


@pytest.mark.parametrize(
    ("identifier", "kind", "normalized"),
    [
        (" Alice@Example.org ", "email", "alice@example.org"),
        ("+86 138 1234 5678", "phone", "+8613812345678"),
        ("＋８６１３８１２３４５６７８", "phone", "+8613812345678"),  # fullwidth plus too
        ("ａｌｉｃｅ", "username", "alice"),
        ("not an email@", "email", None),
        ("+12", "phone", None),
        ("1alice", "username", None),
    ],
)
def test_classify_by_shape_then_normalise(identifier: str, kind: str, normalized: str | None) -> None:
    assert classify(identifier) == (kind, normalized)


def test_blind_index_values_use_the_identifier_rules_for_email_and_phone() -> None:
    nfd = unicodedata.normalize("NFD", " José@Example.org")
    assert normalize_index_value("email", nfd) == normalize_email(nfd)
    assert normalize_index_value("phone", "＋８６１３８１２３４５６７８") == "+8613812345678"
    assert normalize_index_value("name", unicodedata.normalize("NFD", " José ")) == "José"
    for bad in ("   ", "x" * 1025):
        with pytest.raises(InvalidArgument):
            normalize_index_value("name", bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["email", "phone", "username"]))
@example(unicodedata.normalize("NFD", " José@Example.ORG"), "email")
@example("＋８６ １３８-１２３４-５６７８", "phone")
@example("ａｌｉｃｅ_1", "username")
def test_normalising_twice_changes_nothing(value: str, kind: str) -> None:
    # Values are normalised again further down (blind index, confusable key, captcha target), which is
    # only harmless because every normaliser is idempotent.
    try:
        once = normalize_identifier(kind, value)
    except InvalidArgument:
        return
    assert normalize_identifier(kind, once) == once
    assert classify(once) == (kind, once)
