"""Password hashing with the real KDFs (Argon2id at OWASP minimum parameters, Go-made bcrypt) and the policy."""

from __future__ import annotations

import asyncio
import statistics
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import replace

import bcrypt
import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import InvalidArgument
from internal.biz.password import Argon2Params, Argon2PasswordHasher, check_password_policy
from tests.unit.auth.fakes import build_world

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


@pytest.mark.parametrize(
    "password", ["zqxwv-gh1", "pass word 1", "密码密码密码12", "correct horse battery staple", "onlylettersnodigits"]
)
def test_policy_accepts(password: str) -> None:
    check_password_policy(password, 128, username="alice", email="alice@example.com")


@pytest.mark.parametrize(
    "password",
    ["abc1", "a1" * 65, "", "12345678", "password", "iloveyou", "AlicesSecret9", "my alice@ mail", "\x00secret-pw"],
)
def test_policy_refuses(password: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_password_policy(password, 128, username="alice", email="alice@example.com")
    assert err.value.reason == "PASSWORD_WEAK"


def test_length_counts_characters_after_normalisation() -> None:
    # Seven characters whatever the form: "é" is one character in NFC and two in NFD.
    with pytest.raises(InvalidArgument):
        check_password_policy(unicodedata.normalize("NFD", "cafébar"), 128)
    check_password_policy(unicodedata.normalize("NFD", "cafébars"), 128)


async def test_nfc_and_nfd_spellings_are_one_password() -> None:
    hasher = Argon2PasswordHasher(MIN)
    nfc, nfd = unicodedata.normalize("NFC", "café crème 9"), unicodedata.normalize("NFD", "café crème 9")
    assert nfc != nfd
    assert await hasher.verify(nfd, await hasher.hash(nfc))
    assert await hasher.verify(nfc, await hasher.hash(nfd))
    # A Unicode space (no-break) is an ordinary space (RFC 8265 OpaqueString).
    assert await hasher.verify("café\u00a0crème 9", await hasher.hash(nfc))


async def test_hashes_made_before_normalisation_still_verify() -> None:
    """Earlier hashes are of the password as typed: an NFD one still verifies, and the login rehashes it."""
    hasher = Argon2PasswordHasher(MIN)
    typed = unicodedata.normalize("NFD", "café crème 9")
    legacy = Argon2id(salt=b"0123456789abcdef", length=32, iterations=2, lanes=1, memory_cost=19456)
    old_hash = legacy.derive_phc_encoded(typed.encode())
    assert await hasher.verify(typed, old_hash)
    assert not await hasher.verify("café crème 8", old_hash)


GO_HASH_PASSWORD = "gopher-pass-1"
# What the Go service's golang.org/x/crypto/bcrypt.GenerateFromPassword(pw, 10) stores: $2a$, cost 10.
GO_HASH = bcrypt.hashpw(GO_HASH_PASSWORD.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()


async def test_go_bcrypt_hashes_verify_only_with_legacy_bcrypt_on() -> None:
    assert GO_HASH.startswith("$2a$10$")
    legacy = Argon2PasswordHasher(MIN, legacy_bcrypt=True)
    assert await legacy.verify(GO_HASH_PASSWORD, GO_HASH)
    assert await legacy.verify(GO_HASH_PASSWORD, GO_HASH.replace("$2a$", "$2b$", 1))
    assert not await legacy.verify("gopher-pass-2", GO_HASH)
    assert not await legacy.verify("nul\x00byte-pass", GO_HASH)
    assert legacy.needs_rehash(GO_HASH)
    assert not await Argon2PasswordHasher(MIN).verify(GO_HASH_PASSWORD, GO_HASH)


async def test_login_with_a_go_hash_rehashes_to_argon2id() -> None:
    w = build_world()
    w = replace(w, hasher=Argon2PasswordHasher(MIN, legacy_bcrypt=True))
    w = w.with_policy()
    user_id = await w.auth.register(Registration("gopher", "placeholder-pass-1", "gopher@example.com"))
    w.users.rows[user_id]["password_hash"] = GO_HASH  # as imported from the Go service's users table
    await w.auth.login(LoginAttempt("gopher", GO_HASH_PASSWORD))
    rehashed = w.users.rows[user_id]["password_hash"]
    assert rehashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    await w.auth.login(LoginAttempt("gopher@example.com", GO_HASH_PASSWORD))
    assert w.users.rows[user_id]["password_hash"] == rehashed  # once only


async def test_with_legacy_bcrypt_unknown_users_cost_what_a_bcrypt_account_costs() -> None:
    """Every check does one Argon2id and one bcrypt verification, so unknown, Argon2id and bcrypt accounts
    cost the same work (timed with the three kinds taking turns, so background load hits them alike)."""
    hasher = Argon2PasswordHasher(MIN, legacy_bcrypt=True)
    argon = await hasher.hash("s3cretpass")

    checks = {
        "bcrypt": lambda: hasher.verify("wrongpass1", GO_HASH),
        "dummy": lambda: hasher.dummy_verify("wrongpass1"),
        "argon2": lambda: hasher.verify("wrongpass1", argon),
    }
    medians = await _interleaved_medians(checks, rounds=15)
    bcrypt_wrong, dummy, argon_wrong = medians["bcrypt"], medians["dummy"], medians["argon2"]
    assert 0.67 < dummy / bcrypt_wrong < 1.5
    assert 0.67 < argon_wrong / bcrypt_wrong < 1.5


async def _interleaved_medians(checks: dict[str, Callable[[], Awaitable[object]]], rounds: int) -> dict[str, float]:
    """Median duration of each check, the checks taking turns so that background load hits all alike."""
    timings: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(rounds):
        for name, check in checks.items():
            started = time.perf_counter()
            await check()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}
