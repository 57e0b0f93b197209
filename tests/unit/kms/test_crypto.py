"""KmsCipher over the in-memory key ring: per-key encryption, the FieldCipher contract of users' PII, blind
indexes, batches, limits, and the isolation of one named key from another."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internal.biz import kms_cipher as cipher_module
from internal.biz import pii
from internal.biz.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from internal.biz.kms import DEFAULT_KEY, USERS_KEY, KeyDefaults
from internal.biz.kms_cipher import Decrypted, DecryptItem, EncryptItem
from internal.biz.pii import FieldCipher, Sealed
from internal.pkg.kms.envelope import is_legacy
from internal.pkg.kms.rootkey import derive_root_key
from tests.unit.kms.conftest import SALT, SEED, MakeKms
from tests.unit.kms.stack import KmsStack, seal_legacy

CTX = pii.user_context(42)


async def test_users_cipher_satisfies_field_cipher(kms: KmsStack) -> None:
    cipher: FieldCipher = kms.users
    sealed = await cipher.encrypt(pii.EMAIL, b"alice@example.com", CTX)
    assert isinstance(sealed, Sealed) and sealed.key_version == 1
    assert await cipher.decrypt(pii.EMAIL, sealed.ciphertext, CTX) == b"alice@example.com"
    # Users' PII is under the reserved users' key, not under `default`.
    assert (await kms.cipher.decrypt(USERS_KEY, pii.EMAIL, sealed.ciphertext, CTX)).plaintext == b"alice@example.com"
    with pytest.raises(InvalidArgument) as exc:
        await kms.cipher.decrypt(DEFAULT_KEY, pii.EMAIL, sealed.ciphertext, CTX)
    assert exc.value.reason == "CIPHERTEXT_INVALID"


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305", "SM4-GCM"])
async def test_each_algorithm_through_the_ring(make_kms: MakeKms, algorithm: str) -> None:
    kms = await make_kms(algorithm=algorithm).open()
    sealed = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"x" * 1000, {"a": "b"})
    assert (await kms.admin.active_version(DEFAULT_KEY)).algorithm == algorithm
    assert (await kms.cipher.decrypt(DEFAULT_KEY, "f", sealed.ciphertext, {"a": "b"})).plaintext == b"x" * 1000


async def test_a_key_created_with_its_own_algorithm_uses_it(kms: KmsStack) -> None:
    await kms.admin.create_key("legacy.sm4", algorithm="SM4-GCM")
    sealed = await kms.cipher.encrypt("legacy.sm4", "f", b"v", {})
    assert (await kms.admin.active_version("legacy.sm4")).algorithm == "SM4-GCM"
    assert (await kms.admin.active_version(DEFAULT_KEY)).algorithm == "AES-256-GCM"
    assert (await kms.cipher.decrypt("legacy.sm4", "f", sealed.ciphertext, {})).plaintext == b"v"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plaintext=st.binary(max_size=4096), context=st.dictionaries(st.text(max_size=10), st.text(max_size=10)))
async def test_round_trip_property(kms: KmsStack, plaintext: bytes, context: dict[str, str]) -> None:
    sealed = await kms.cipher.encrypt(DEFAULT_KEY, "field", plaintext, context)
    assert (await kms.cipher.decrypt(DEFAULT_KEY, "field", sealed.ciphertext, context)).plaintext == plaintext


async def test_field_and_context_swaps_fail(kms: KmsStack) -> None:
    sealed = await kms.users.encrypt(pii.EMAIL, b"alice@example.com", CTX)
    for field, context in [(pii.PHONE, CTX), (pii.EMAIL, pii.user_context(43)), (pii.EMAIL, {})]:
        with pytest.raises(InvalidArgument) as exc:
            await kms.users.decrypt(field, sealed.ciphertext, context)
        assert exc.value.reason == "CIPHERTEXT_INVALID"


async def test_unknown_version_is_key_not_found(kms: KmsStack) -> None:
    sealed = bytearray((await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})).ciphertext)
    for version in (2, 999):
        sealed[2:6] = version.to_bytes(4, "big")
        with pytest.raises(NotFound) as exc:
            await kms.cipher.decrypt(DEFAULT_KEY, "f", bytes(sealed), {})
        assert exc.value.reason == "KEY_NOT_FOUND"
        assert exc.value.metadata == {"key_name": DEFAULT_KEY, "key_version": str(version)}


async def test_unknown_key_is_key_not_found(kms: KmsStack) -> None:
    for call in (
        kms.cipher.encrypt("no.such.key", "f", b"v", {}),
        kms.cipher.encrypt_batch("no.such.key", [EncryptItem("f", b"v")]),
    ):
        with pytest.raises(NotFound) as exc:
            await call
        assert exc.value.reason == "KEY_NOT_FOUND" and exc.value.metadata == {"key_name": "no.such.key"}


async def test_limits(kms: KmsStack) -> None:
    cipher = kms.cipher
    limit = cipher.max_plaintext_bytes
    await cipher.encrypt(DEFAULT_KEY, "f", b"x" * limit, {})
    with pytest.raises(InvalidArgument) as exc:
        await cipher.encrypt(DEFAULT_KEY, "f", b"x" * (limit + 1), {})
    assert exc.value.reason == "PLAINTEXT_TOO_LARGE"
    with pytest.raises(InvalidArgument) as exc:
        await cipher.encrypt(DEFAULT_KEY, "f", "text", {})  # type: ignore[arg-type]
    assert exc.value.reason == "VALIDATION_ERROR"
    too_many = [EncryptItem("f", b"")] * (cipher.max_batch_items + 1)
    with pytest.raises(InvalidArgument) as exc:
        await cipher.encrypt_batch(DEFAULT_KEY, too_many)
    assert exc.value.reason == "BATCH_TOO_LARGE"
    with pytest.raises(InvalidArgument) as exc:
        await cipher.decrypt_batch(DEFAULT_KEY, [DecryptItem("f", b"")] * (cipher.max_batch_items + 1))
    assert exc.value.reason == "BATCH_TOO_LARGE"


async def test_batches_fail_item_by_item(kms: KmsStack) -> None:
    cipher = kms.cipher
    limit = cipher.max_plaintext_bytes
    result = await cipher.encrypt_batch(
        DEFAULT_KEY,
        [
            EncryptItem("f", b"one", {"i": "1"}),
            EncryptItem("", b"bad"),
            EncryptItem("f", b"x" * (limit + 1)),
            EncryptItem("f", b"two", {"i": "2"}),
        ],
    )
    assert result.algorithm == "AES-256-GCM" and result.key_version == 1
    ok1, bad_field, too_large, ok2 = result.results
    assert isinstance(ok1, bytes) and isinstance(ok2, bytes)
    assert isinstance(bad_field, DomainError) and bad_field.reason == "VALIDATION_ERROR"
    assert isinstance(too_large, DomainError) and too_large.reason == "PLAINTEXT_TOO_LARGE"
    tampered = ok2[:-1] + bytes([ok2[-1] ^ 1])
    unknown = bytearray(ok1)
    unknown[2:6] = (77).to_bytes(4, "big")
    opened = await cipher.decrypt_batch(
        DEFAULT_KEY,
        [
            DecryptItem("f", ok1, {"i": "1"}),
            DecryptItem("f", tampered, {"i": "2"}),
            DecryptItem("f", bytes(unknown), {"i": "1"}),
            DecryptItem("f", b"garbage", {}),
            DecryptItem("f", ok2, {"i": "2"}),
            DecryptItem("g", ok2, {"i": "2"}),
        ],
    )
    assert opened[0] == Decrypted(b"one", 1) and opened[4] == Decrypted(b"two", 1)
    reasons = [r.reason for r in opened if isinstance(r, DomainError)]
    assert reasons == ["CIPHERTEXT_INVALID", "KEY_NOT_FOUND", "CIPHERTEXT_INVALID", "CIPHERTEXT_INVALID"]


async def test_rewrap_moves_to_the_active_version(kms: KmsStack) -> None:
    old = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"secret", {"k": "v"})
    await kms.admin.rotate(DEFAULT_KEY, "test")
    new = await kms.cipher.rewrap(DEFAULT_KEY, "f", old.ciphertext, {"k": "v"})
    assert (old.key_version, new.key_version) == (1, 2)
    assert (await kms.cipher.decrypt(DEFAULT_KEY, "f", new.ciphertext, {"k": "v"})).plaintext == b"secret"


async def test_large_work_goes_to_a_thread(make_kms: MakeKms, monkeypatch: pytest.MonkeyPatch) -> None:
    kms = await make_kms(max_plaintext_bytes=cipher_module.THREAD_COST_THRESHOLD).open()
    calls: list[Any] = []
    real = asyncio.to_thread

    async def counting(fn: Any, *args: Any) -> Any:
        calls.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(cipher_module.asyncio, "to_thread", counting)
    small = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"x" * 100, {})
    await kms.cipher.decrypt(DEFAULT_KEY, "f", small.ciphertext, {})
    assert calls == []
    large = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"x" * cipher_module.THREAD_COST_THRESHOLD, {})
    assert len(calls) == 1
    await kms.cipher.decrypt(DEFAULT_KEY, "f", large.ciphertext, {})
    assert len(calls) == 2


async def test_batches_yield_between_chunks(kms: KmsStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches stay on the event loop (no thread hand-over) but give other calls a turn between chunks."""
    yields: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        yields.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(cipher_module.asyncio, "sleep", counting_sleep)
    monkeypatch.setattr(cipher_module.asyncio, "to_thread", None)  # any use would fail
    limit = kms.cipher.max_plaintext_bytes
    per_chunk = max(1, min(cipher_module.CHUNK_ITEMS, cipher_module.CHUNK_COST // limit))
    items = [EncryptItem("f", bytes([i % 256]) * 32, {"i": str(i % 3)}) for i in range(per_chunk * 2 + 1)]
    result = await kms.cipher.encrypt_batch(DEFAULT_KEY, items)
    assert yields == [0, 0]  # three chunks
    opened = await kms.cipher.decrypt_batch(
        DEFAULT_KEY,
        [DecryptItem("f", c, item.context) for c, item in zip(result.results, items, strict=True)],  # type: ignore[arg-type]
    )
    assert yields == [0, 0, 0, 0]
    assert [o.plaintext for o in opened] == [item.plaintext for item in items]  # type: ignore[union-attr]


def blind(kms: KmsStack, field: str, value: str, key_name: str = DEFAULT_KEY) -> str:
    return kms.cipher.blind_index(key_name, field, value)


async def test_blind_index_normalization(kms: KmsStack) -> None:
    assert blind(kms, "email", " A@B.com ") == blind(kms, "email", "a@b.com")
    assert blind(kms, "phone", "+86 138-1234 5678") == blind(kms, "phone", "+8613812345678")
    assert blind(kms, "phone", " +1 (415) 555-2671 ") == blind(kms, "phone", "+14155552671")
    assert blind(kms, "name", "  Alice ") == blind(kms, "name", "Alice")
    assert blind(kms, "name", "Alice") != blind(kms, "name", "alice")
    assert blind(kms, "email", "a@b.com") != blind(kms, "name", "a@b.com")
    for field, value in (("email", "a@b.com"), ("phone", "+8613812345678"), ("name", "x")):
        assert re.fullmatch(r"[0-9a-f]{64}", blind(kms, field, value))
    # The users table's own normaliser: NFD and NFC spellings of one address hash alike, and HashField refuses
    # what the users table would never store.
    assert blind(kms, "email", "cafe\u0301@example.com") == blind(kms, "email", "caf\u00e9@example.com")
    assert blind(kms, "email", "a@b.com", USERS_KEY) == kms.users.blind_index("email", " A@B.com")
    with pytest.raises(InvalidArgument):
        blind(kms, "email", "not an address")


@pytest.mark.parametrize("phone", ["13812345678", "+0123456", "+1", "+123456789012345678", "+86abc", ""])
async def test_blind_index_rejects_non_e164_phones(kms: KmsStack, phone: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        blind(kms, "phone", phone)
    assert exc.value.reason == "VALIDATION_ERROR"


async def test_blind_index_is_keyed(make_kms: MakeKms, kms: KmsStack) -> None:
    other = await make_kms(seed=SEED + "-other").open()
    assert blind(kms, "email", "a@b.com") != blind(other, "email", "a@b.com")
    # Blind indexes do not rotate with data keys.
    before = blind(kms, "email", "a@b.com")
    await kms.admin.rotate(DEFAULT_KEY, "test")
    kms.ring.drop_cache()
    assert blind(kms, "email", "a@b.com") == before


async def test_each_named_key_has_its_own_blind_index_keys(kms: KmsStack) -> None:
    await kms.admin.create_key("orders")
    hashes = {name: blind(kms, "email", "a@b.com", name) for name in (DEFAULT_KEY, "orders", USERS_KEY)}
    assert len(set(hashes.values())) == 3
    # `default` keeps the blind-index key of the time before named keys, so hashes callers stored still match.
    legacy_key = derive_root_key(SEED, SALT, 10_000).derive(b"blind-index:email")
    assert hashes[DEFAULT_KEY] == hmac.new(legacy_key, b"a@b.com", hashlib.sha256).hexdigest()
    # Users' lookups try the users' key first, then what rows written before it hold.
    assert kms.users.blind_index("email", " A@B.com") == hashes[USERS_KEY]
    assert kms.users.lookup_hashes("email", "a@b.com") == [hashes[USERS_KEY], hashes[DEFAULT_KEY]]


async def test_same_version_number_under_two_keys_never_opens_the_other(kms: KmsStack) -> None:
    await kms.admin.create_key("orders")
    await kms.admin.create_key("payments.eu")
    names = (DEFAULT_KEY, "orders", "payments.eu", USERS_KEY)
    sealed = {name: await kms.cipher.encrypt(name, pii.EMAIL, b"alice@example.com", CTX) for name in names}
    assert {s.key_version for s in sealed.values()} == {1}
    for made_under, value in sealed.items():
        for opened_under in names:
            if opened_under == made_under:
                assert (await kms.cipher.decrypt(opened_under, pii.EMAIL, value.ciphertext, CTX)).key_version == 1
                continue
            with pytest.raises(InvalidArgument) as exc:
                await kms.cipher.decrypt(opened_under, pii.EMAIL, value.ciphertext, CTX)
            assert exc.value.reason == "CIPHERTEXT_INVALID"
            with pytest.raises(InvalidArgument):
                await kms.cipher.rewrap(opened_under, pii.EMAIL, value.ciphertext, CTX)
        others = [n for n in names if n != made_under]
        opened = [await kms.cipher.decrypt_batch(n, [DecryptItem(pii.EMAIL, value.ciphertext, CTX)]) for n in others]
        assert [r[0].reason for r in opened] == ["CIPHERTEXT_INVALID"] * len(others)  # type: ignore[union-attr]


async def test_legacy_envelopes_open_only_under_default(kms: KmsStack) -> None:
    await kms.admin.create_key("orders")
    default_v1 = await kms.ring.load(DEFAULT_KEY, 1)
    legacy = seal_legacy(default_v1, pii.EMAIL, b"old@example.com", CTX)
    assert is_legacy(legacy)
    assert (await kms.cipher.decrypt(DEFAULT_KEY, pii.EMAIL, legacy, CTX)) == Decrypted(b"old@example.com", 1)
    opened = await kms.cipher.decrypt_batch(DEFAULT_KEY, [DecryptItem(pii.EMAIL, legacy, CTX)])
    assert opened == [Decrypted(b"old@example.com", 1)]
    # Users' rows from before named keys hold such values: the users' cipher opens them under `default`.
    assert await kms.users.decrypt(pii.EMAIL, legacy, CTX) == b"old@example.com"
    assert not kms.users.is_current(legacy, 1)
    for name in ("orders", USERS_KEY):  # both have a version 1 of their own
        with pytest.raises(InvalidArgument) as exc:
            await kms.cipher.decrypt(name, pii.EMAIL, legacy, CTX)
        assert exc.value.reason == "CIPHERTEXT_INVALID"
    # Still bound to field and context, like every envelope.
    with pytest.raises(InvalidArgument):
        await kms.cipher.decrypt(DEFAULT_KEY, pii.PHONE, legacy, CTX)
    # A current envelope relabelled as format 1 does not open either: the format byte is authenticated.
    current = bytearray((await kms.cipher.encrypt(DEFAULT_KEY, pii.EMAIL, b"new@example.com", CTX)).ciphertext)
    current[1] = 1
    with pytest.raises(InvalidArgument) as exc:
        await kms.cipher.decrypt(DEFAULT_KEY, pii.EMAIL, bytes(current), CTX)
    assert exc.value.reason == "CIPHERTEXT_INVALID"


async def test_not_initialized_and_closed(make_kms: MakeKms) -> None:
    kms = make_kms()
    with pytest.raises(FailedPrecondition) as exc:
        await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    assert exc.value.reason == "KMS_NOT_INITIALIZED"
    with pytest.raises(FailedPrecondition):
        kms.cipher.blind_index(DEFAULT_KEY, "email", "a@b.com")
    await kms.open()
    sealed = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    kms.cipher.blind_index(DEFAULT_KEY, "email", "a@b.com")
    await kms.close()
    for call in (
        kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {}),
        kms.cipher.decrypt(DEFAULT_KEY, "f", sealed.ciphertext, {}),
        kms.admin.rotate(DEFAULT_KEY, "x"),
        kms.admin.active_version(DEFAULT_KEY),
    ):
        with pytest.raises(FailedPrecondition) as exc:
            await call
        assert exc.value.reason == "KMS_NOT_INITIALIZED"
    with pytest.raises(FailedPrecondition):
        kms.cipher.blind_index(DEFAULT_KEY, "email", "a@b.com")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=100),
        st.binary(max_size=60).map(lambda b: b"\xa7\x01" + b),
        st.binary(max_size=60).map(lambda b: b"\xa7\x02" + b),
    ),
    key_name=st.sampled_from([DEFAULT_KEY, USERS_KEY]),
)
async def test_decrypting_random_bytes_gives_only_domain_reasons(kms: KmsStack, data: bytes, key_name: str) -> None:
    with pytest.raises(DomainError) as exc:
        await kms.cipher.decrypt(key_name, "f", data, {})
    assert exc.value.reason in {"CIPHERTEXT_INVALID", "KEY_NOT_FOUND"}


async def test_cbc_configuration_is_refused_at_start(make_kms: MakeKms) -> None:
    kms = make_kms()
    kms.ring.defaults = KeyDefaults("AES-256-CBC", kms.ring.defaults.rotate_interval, 1 << 30)
    with pytest.raises(InvalidArgument) as exc:
        await kms.open()
    assert exc.value.reason == "VALIDATION_ERROR" and "AES-256-CBC" in exc.value.message
    assert not kms.ring.initialized


async def test_the_rings_drop_cache_lets_go_of_the_sealer_and_its_key(kms: KmsStack) -> None:
    first = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    sealer = kms.ring._sealers[DEFAULT_KEY]
    kms.ring.drop_cache()
    assert kms.ring._sealers == {} and kms.ring.cached(DEFAULT_KEY, 1) is None
    second = await kms.cipher.encrypt(DEFAULT_KEY, "f", b"v", {})
    assert kms.ring._sealers[DEFAULT_KEY] is not sealer, "a fresh sealer for the reloaded key"
    assert first.key_version == second.key_version
    assert (await kms.cipher.decrypt(DEFAULT_KEY, "f", first.ciphertext, {})).plaintext == b"v"
