"""Named keys: which names are valid, which credential key patterns are, and which keys a pattern reaches."""

from __future__ import annotations

import pytest

from internal.biz.errors import InvalidArgument
from internal.biz.kms import (
    DEFAULT_KEY,
    USERS_KEY,
    is_reserved,
    key_denied,
    key_matcher,
    key_name_or_default,
    validate_key_pattern,
)


@pytest.mark.parametrize("name", ["default", "orders", "a", "payments.eu", "team_1.key-2", "x" * 63, USERS_KEY])
def test_valid_key_names(name: str) -> None:
    assert key_name_or_default(name) == name


def test_empty_name_means_default() -> None:
    assert key_name_or_default("") == DEFAULT_KEY


@pytest.mark.parametrize(
    "name",
    ["Orders", "1orders", "_orders", ".orders", "-x", "x" * 64, "orders key", "ordérs", "orders/eu", "a*", "o\x00"],
)
def test_invalid_key_names_are_validation_errors(name: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        key_name_or_default(name)
    assert exc.value.reason == "VALIDATION_ERROR" and exc.value.metadata == {"field": "key_name"}


def test_a_name_that_is_not_text_is_a_validation_error() -> None:
    with pytest.raises(InvalidArgument):
        key_name_or_default(b"orders")  # type: ignore[arg-type]


def test_reserved_names() -> None:
    assert is_reserved(USERS_KEY) and is_reserved("authkms.anything")
    assert not is_reserved("authkms") and not is_reserved("authkmsx.users") and not is_reserved(DEFAULT_KEY)


@pytest.mark.parametrize("pattern", ["orders", "payments.*", "default", "a.*", "team_1.*", "authkms", "authkmsx.*"])
def test_valid_key_patterns(pattern: str) -> None:
    assert validate_key_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern",
    ["*", ".*", "payments*", "payments.**", "*.eu", "Orders", "", "authkms.users", "authkms.*", "authkms.x.*", "a b"],
)
def test_invalid_key_patterns(pattern: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_key_pattern(pattern)
    assert exc.value.reason == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("patterns", "name", "allowed"),
    [
        (["orders"], "orders", True),
        (["orders"], "orders.eu", False),
        (["orders"], "order", False),
        (["orders"], "default", False),
        (["payments.*"], "payments.eu", True),
        (["payments.*"], "payments.eu.card", True),
        (["payments.*"], "payments", False),  # the prefix pattern covers keys below it, not the stem itself
        (["payments.*"], "paymentsx", False),
        (["payments.*"], "payment.eu", False),
        (["orders", "payments.*"], "payments.us", True),
        (["orders", "payments.*"], "default", False),
        ([], "default", False),
        (["default"], "default", True),
        # Reserved keys: never, whatever the patterns (even ones validate_key_pattern would refuse).
        ([USERS_KEY], USERS_KEY, False),
        (["authkms.*"], USERS_KEY, False),
        (["authkms.*"], "authkms.other", False),
    ],
)
def test_key_matcher(patterns: list[str], name: str, allowed: bool) -> None:
    assert key_matcher(patterns)(name) is allowed


def test_denial_names_the_key_only() -> None:
    denied = key_denied("orders")
    assert denied.reason == "PERMISSION_DENIED" and denied.metadata == {"key_name": "orders"}
