"""The Go service's formats as adopt reads them: its root key, wrapped data keys and `<version>:<alg>:<hex>` values.

The values here are made with plain AES-GCM, independently of the reader, the way the Go service makes them."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from internal.pkg.kms.legacy_go import (
    GO_DEFAULT_ITERATIONS,
    GoKeyring,
    GoSettings,
    LegacyFormatError,
    derive_go_root_key,
    parse_go_value,
    unwrap_go_data_key,
    version_names,
)


def seal(key: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, None)


def test_root_key_is_pbkdf2_sha256_of_the_go_defaults() -> None:
    settings = GoSettings(iterations=10_000)
    expected = hashlib.pbkdf2_hmac("sha256", b"default-seed-value", b"default-salt-value", 10_000, 32)
    assert derive_go_root_key(settings) == expected
    assert GoSettings().iterations == GO_DEFAULT_ITERATIONS == 100_000
    assert "default-seed-value" not in repr(GoSettings())


@pytest.mark.parametrize(
    "settings", [GoSettings(seed=""), GoSettings(salt=""), GoSettings(iterations=9_999)], ids=["seed", "salt", "iter"]
)
def test_unusable_settings_are_refused(settings: GoSettings) -> None:
    with pytest.raises(LegacyFormatError):
        derive_go_root_key(settings)


def test_data_key_opens_only_under_its_root_key() -> None:
    root, material = os.urandom(32), os.urandom(32)
    wrapped = seal(root, material)
    assert unwrap_go_data_key(root, wrapped) == material
    for bad_root, bad in ((os.urandom(32), wrapped), (root, wrapped[:-1] + bytes([wrapped[-1] ^ 1])), (root, b"x")):
        with pytest.raises(LegacyFormatError):
            unwrap_go_data_key(bad_root, bad)
    with pytest.raises(LegacyFormatError, match="not 32 bytes"):
        unwrap_go_data_key(root, seal(root, b"short"))


def test_values_open_under_the_key_their_version_names() -> None:
    one, two = os.urandom(32), os.urandom(32)
    ring = GoKeyring()
    ring.add("id-1", version_names(1, None), one)
    ring.add("id-2", version_names(2, {"version": "v1733011200123456789"}), two)
    assert "id-1" in ring.ids and "material" in repr(ring) and one.hex() not in repr(ring)
    assert ring.open(f"1:AES-256-GCM:{seal(one, b'a@example.com').hex()}".encode()) == b"a@example.com"
    assert ring.open(f"v1:AES-256-GCM:{seal(one, b'x').hex()}".encode()) == b"x"
    assert ring.open(f"v1733011200123456789:AES-256-GCM:{seal(two, 'é'.encode()).hex()}".encode()) == "é".encode()
    with pytest.raises(LegacyFormatError, match="not in kms_data_keys"):
        ring.open(f"7:AES-256-GCM:{seal(one, b'x').hex()}".encode())
    with pytest.raises(LegacyFormatError, match="does not open"):
        ring.open(f"2:AES-256-GCM:{seal(one, b'x').hex()}".encode())


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"1:AES-256-GCM",
        b"1:AES-256-GCM:zz",
        b"1:AES-256-CBC:" + b"00" * 40,
        b"one:AES-256-GCM:" + b"00" * 40,
        b"1:AES-256-GCM:" + b"00" * 10,
        b"1:AES-256-GCM:00:00",
        "1:AES-256-GCM:é".encode(),
        b"\xa7\x02" + os.urandom(40),  # one of our own envelopes
    ],
)
def test_malformed_values_are_refused_without_echoing_them(stored: bytes) -> None:
    with pytest.raises(LegacyFormatError) as refused:
        parse_go_value(stored)
    assert stored.hex() not in str(refused.value) or not stored
