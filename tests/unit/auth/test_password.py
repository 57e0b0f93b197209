"""Argon2id hashing with the real KDF (OWASP minimum parameters: ~20-40 ms per operation)."""

from __future__ import annotations

import asyncio

import pytest

from internal.biz.errors import InvalidArgument
from internal.biz.password import Argon2Params, Argon2PasswordHasher, check_password_policy

MIN = Argon2Params(memory_kib=19456, iterations=2, lanes=1)


async def test_hash_is_phc_argon2id_salted_and_verifies() -> None:
    hasher = Argon2PasswordHasher(MIN)
    first, second = await asyncio.gather(hasher.hash("s3cretpass"), hasher.hash("s3cretpass"))
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$") and first != second
    assert await hasher.verify("s3cretpass", first)
    assert not await hasher.verify("s3cretpasS", first)
    assert not await hasher.verify("s3cretpass", "not-a-phc-string")
    assert not await hasher.verify("s3cretpass", "$2b$12$legacybcrypthashvalue")


async def test_needs_rehash_when_parameters_change() -> None:
    stored = await Argon2PasswordHasher(MIN).hash("s3cretpass")
    assert not Argon2PasswordHasher(MIN).needs_rehash(stored)
    assert Argon2PasswordHasher(Argon2Params(memory_kib=65536, iterations=2, lanes=1)).needs_rehash(stored)
    assert Argon2PasswordHasher(Argon2Params(iterations=3)).needs_rehash(stored)
    assert Argon2PasswordHasher(MIN).needs_rehash("$2b$12$legacy")


async def test_dummy_verify_costs_about_one_verification() -> None:
    hasher = Argon2PasswordHasher(MIN)
    stored = await hasher.hash("s3cretpass")
    await hasher.dummy_verify("warm-up")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await hasher.verify("wrongpass1", stored)
    real = loop.time() - t0
    t0 = loop.time()
    await hasher.dummy_verify("wrongpass1")
    dummy = loop.time() - t0
    assert 0.3 < dummy / real < 3


@pytest.mark.parametrize("password", ["abcdefg1", "pass word 1", "密码密码密码12"])
def test_policy_accepts(password: str) -> None:
    check_password_policy(password, 128)


@pytest.mark.parametrize("password", ["abc1", "abcdefgh", "12345678", "a1" * 65, ""])
def test_policy_refuses(password: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_password_policy(password, 128)
    assert err.value.reason == "PASSWORD_WEAK"
