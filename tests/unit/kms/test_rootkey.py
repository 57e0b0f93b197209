"""Root-key derivation: parameter validation, determinism, secrecy of repr, derived subkeys."""

from __future__ import annotations

import asyncio
import hashlib
import pickle

import pytest

from internal.biz.errors import InvalidArgument
from internal.pkg.kms.datakey import KeyUnwrapError, KeyWrapper, new_material
from internal.pkg.kms.envelope import Algorithm
from internal.pkg.kms.rootkey import RootKey, derive_root_key, derive_root_key_async

SEED = "unit-test-seed-0123456789"
SALT = "unit-salt"


@pytest.mark.parametrize(
    ("seed", "salt", "iterations", "key_length", "needle"),
    [
        ("", SALT, 10_000, 32, "kms.seed"),
        ("   ", SALT, 10_000, 32, "kms.seed"),
        ("short-seed", SALT, 10_000, 32, "16 characters"),
        (SEED, "", 10_000, 32, "kms.salt"),
        (SEED, "1234567", 10_000, 32, "8 bytes"),
        (SEED, SALT, 9_999, 32, "10000"),
        (SEED, SALT, 0, 32, "kms.iterations"),
        (SEED, SALT, 10_000, 20, "kms.key_length"),
        (SEED, SALT, 10_000, 64, "kms.key_length"),
    ],
)
def test_invalid_parameters(seed: str, salt: str, iterations: int, key_length: int, needle: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        derive_root_key(seed, salt, iterations, key_length)
    assert exc.value.reason == "VALIDATION_ERROR"
    assert needle in exc.value.message
    assert seed.strip() == "" or seed not in exc.value.message


def test_matches_pbkdf2_hmac_sha256() -> None:
    for length in (16, 24, 32):
        key = derive_root_key(SEED, SALT, 10_000, length)
        expected = hashlib.pbkdf2_hmac("sha256", SEED.encode(), SALT.encode(), 10_000, length)
        assert key.length == length
        assert key.derive(b"x") == RootKey(expected).derive(b"x")


def test_repr_hides_the_key_and_pickling_is_refused() -> None:
    key = derive_root_key(SEED, SALT, 10_000)
    material = hashlib.pbkdf2_hmac("sha256", SEED.encode(), SALT.encode(), 10_000, 32)
    for text in (repr(key), str(key), f"{key}"):
        assert material.hex() not in text and "hidden" in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_subkeys_differ_by_purpose_key_and_field() -> None:
    key = derive_root_key(SEED, SALT, 10_000)
    names = ("default", "orders", "orders.eu", "authkms.users", "a", "a:b")
    blind = {(n, f): key.blind_index_key(n, f) for n in names for f in ("email", "phone", "b:email", "")}
    subkeys = {key.wrap_key(), key.verification_key(), *blind.values()}
    assert len(subkeys) == 2 + len(blind)
    # The name is length-prefixed: ("a", "b:email") and ("a:b", "email") must not share a key.
    assert blind[("a", "b:email")] != blind[("a:b", "email")]
    assert all(len(k) == 32 for k in subkeys)


def test_default_keeps_the_blind_index_key_of_before_named_keys() -> None:
    """Hashes stored under the one blind-index key per field of the time before named keys stay valid."""
    key = derive_root_key(SEED, SALT, 10_000)
    for field in ("email", "phone", "name"):
        assert key.blind_index_key("default", field) == key.derive(b"blind-index:" + field.encode())
        assert key.blind_index_key("orders", field) != key.derive(b"blind-index:" + field.encode())
    assert key.blind_index_key("default", "email") == derive_root_key(SEED, SALT, 10_000).blind_index_key(
        "default", "email"
    )


def test_wipe() -> None:
    key = derive_root_key(SEED, SALT, 10_000)
    key.wipe()
    assert key.wiped
    with pytest.raises(RuntimeError):
        key.derive(b"x")


async def test_async_helper_runs_off_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    key = await derive_root_key_async(SEED, SALT, 300_000)
    task.cancel()
    assert key.length == 32 and ticks > 5
    with pytest.raises(InvalidArgument):
        await derive_root_key_async(SEED, SALT, 100)


def test_wrapped_key_is_bound_to_id_version_and_algorithm() -> None:
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    material = new_material()
    wrapped = wrapper.wrap("id-1", 1, Algorithm.AES_256_GCM, material)
    digest = wrapper.key_hash(material)
    assert len(digest) == 64
    assert wrapper.unwrap("id-1", 1, "AES-256-GCM", wrapped, digest) == material
    for key_id, version, algorithm in [("id-2", 1, "AES-256-GCM"), ("id-1", 2, "AES-256-GCM"), ("id-1", 1, "SM4-GCM")]:
        with pytest.raises(KeyUnwrapError):
            wrapper.unwrap(key_id, version, algorithm, wrapped, digest)
    with pytest.raises(KeyUnwrapError):
        wrapper.unwrap("id-1", 1, "AES-256-GCM", wrapped, "0" * 64)
    with pytest.raises(KeyUnwrapError):
        wrapper.unwrap("id-1", 1, "AES-256-GCM", None, digest)
    other = KeyWrapper(derive_root_key(SEED + "x", SALT, 10_000))
    with pytest.raises(KeyUnwrapError):
        other.unwrap("id-1", 1, "AES-256-GCM", wrapped, digest)
    assert material.hex() not in repr(wrapper)
