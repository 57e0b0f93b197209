"""CryptoService over the in-memory manager: FieldCipher contract, blind indexes, batches, limits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internal.biz import pii
from internal.biz.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from internal.biz.pii import FieldCipher, Sealed
from internal.pkg.kms import crypto as crypto_module
from internal.pkg.kms.crypto import Decrypted, DecryptItem, EncryptItem
from internal.pkg.kms.manager import KMSManager
from tests.unit.kms.conftest import SEED

CTX = pii.user_context(42)


async def test_satisfies_field_cipher(manager: KMSManager) -> None:
    cipher: FieldCipher = manager.crypto
    sealed = await cipher.encrypt(pii.EMAIL, b"alice@example.com", CTX)
    assert isinstance(sealed, Sealed) and sealed.key_version == 1
    assert await cipher.decrypt(pii.EMAIL, sealed.ciphertext, CTX) == b"alice@example.com"


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305", "SM4-GCM"])
async def test_each_algorithm_through_the_manager(make_manager: Callable[..., KMSManager], algorithm: str) -> None:
    m = make_manager(algorithm=algorithm)
    await m.initialize()
    try:
        sealed = await m.crypto.encrypt("f", b"x" * 1000, {"a": "b"})
        assert (await m.active_key()).algorithm == algorithm
        assert await m.crypto.decrypt("f", sealed.ciphertext, {"a": "b"}) == b"x" * 1000
    finally:
        await m.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plaintext=st.binary(max_size=4096), context=st.dictionaries(st.text(max_size=10), st.text(max_size=10)))
async def test_round_trip_property(manager: KMSManager, plaintext: bytes, context: dict[str, str]) -> None:
    sealed = await manager.crypto.encrypt("field", plaintext, context)
    assert await manager.crypto.decrypt("field", sealed.ciphertext, context) == plaintext


async def test_field_and_context_swaps_fail(manager: KMSManager) -> None:
    sealed = await manager.crypto.encrypt(pii.EMAIL, b"alice@example.com", CTX)
    for field, context in [(pii.PHONE, CTX), (pii.EMAIL, pii.user_context(43)), (pii.EMAIL, {})]:
        with pytest.raises(InvalidArgument) as exc:
            await manager.crypto.decrypt(field, sealed.ciphertext, context)
        assert exc.value.reason == "CIPHERTEXT_INVALID"


async def test_unknown_version_is_key_not_found(manager: KMSManager) -> None:
    sealed = bytearray((await manager.crypto.encrypt("f", b"v", {})).ciphertext)
    for version in (2, 999):
        sealed[2:6] = version.to_bytes(4, "big")
        with pytest.raises(NotFound) as exc:
            await manager.crypto.decrypt("f", bytes(sealed), {})
        assert exc.value.reason == "KEY_NOT_FOUND"


async def test_limits(manager: KMSManager) -> None:
    limit = manager.crypto.max_plaintext_bytes
    await manager.crypto.encrypt("f", b"x" * limit, {})
    with pytest.raises(InvalidArgument) as exc:
        await manager.crypto.encrypt("f", b"x" * (limit + 1), {})
    assert exc.value.reason == "PLAINTEXT_TOO_LARGE"
    with pytest.raises(InvalidArgument) as exc:
        await manager.crypto.encrypt("f", "text", {})  # type: ignore[arg-type]
    assert exc.value.reason == "VALIDATION_ERROR"
    too_many = [EncryptItem("f", b"")] * (manager.crypto.max_batch_items + 1)
    with pytest.raises(InvalidArgument) as exc:
        await manager.crypto.encrypt_batch(too_many)
    assert exc.value.reason == "BATCH_TOO_LARGE"
    with pytest.raises(InvalidArgument) as exc:
        await manager.crypto.decrypt_batch([DecryptItem("f", b"")] * (manager.crypto.max_batch_items + 1))
    assert exc.value.reason == "BATCH_TOO_LARGE"


async def test_batches_fail_item_by_item(manager: KMSManager) -> None:
    limit = manager.crypto.max_plaintext_bytes
    result = await manager.crypto.encrypt_batch(
        [
            EncryptItem("f", b"one", {"i": "1"}),
            EncryptItem("", b"bad"),
            EncryptItem("f", b"x" * (limit + 1)),
            EncryptItem("f", b"two", {"i": "2"}),
        ]
    )
    assert result.algorithm == "AES-256-GCM" and result.key_version == 1
    ok1, bad_field, too_large, ok2 = result.results
    assert isinstance(ok1, bytes) and isinstance(ok2, bytes)
    assert isinstance(bad_field, DomainError) and bad_field.reason == "VALIDATION_ERROR"
    assert isinstance(too_large, DomainError) and too_large.reason == "PLAINTEXT_TOO_LARGE"
    tampered = ok2[:-1] + bytes([ok2[-1] ^ 1])
    unknown = bytearray(ok1)
    unknown[2:6] = (77).to_bytes(4, "big")
    opened = await manager.crypto.decrypt_batch(
        [
            DecryptItem("f", ok1, {"i": "1"}),
            DecryptItem("f", tampered, {"i": "2"}),
            DecryptItem("f", bytes(unknown), {"i": "1"}),
            DecryptItem("f", b"garbage", {}),
            DecryptItem("f", ok2, {"i": "2"}),
            DecryptItem("g", ok2, {"i": "2"}),
        ]
    )
    assert opened[0] == Decrypted(b"one", 1) and opened[4] == Decrypted(b"two", 1)
    reasons = [r.reason for r in opened if isinstance(r, DomainError)]
    assert reasons == ["CIPHERTEXT_INVALID", "KEY_NOT_FOUND", "CIPHERTEXT_INVALID", "CIPHERTEXT_INVALID"]


async def test_rewrap_moves_to_the_active_key(manager: KMSManager) -> None:
    old = await manager.crypto.encrypt("f", b"secret", {"k": "v"})
    await manager.rotate("test")
    new = await manager.crypto.rewrap("f", old.ciphertext, {"k": "v"})
    assert (old.key_version, new.key_version) == (1, 2)
    assert await manager.crypto.decrypt("f", new.ciphertext, {"k": "v"}) == b"secret"


async def test_large_work_goes_to_a_thread(
    make_manager: Callable[..., KMSManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager(max_plaintext_bytes=crypto_module.THREAD_COST_THRESHOLD)
    await manager.initialize()
    calls: list[Any] = []
    real = asyncio.to_thread

    async def counting(fn: Any, *args: Any) -> Any:
        calls.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(crypto_module.asyncio, "to_thread", counting)
    await manager.crypto.encrypt("f", b"x" * 100, {})
    assert calls == []
    await manager.crypto.encrypt("f", b"x" * crypto_module.THREAD_COST_THRESHOLD, {})
    assert len(calls) == 1
    await manager.close()


async def test_batches_yield_between_chunks(manager: KMSManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches stay on the event loop (no thread hand-over) but give other calls a turn between chunks."""
    yields: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float) -> None:
        yields.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(crypto_module.asyncio, "sleep", counting_sleep)
    monkeypatch.setattr(crypto_module.asyncio, "to_thread", None)  # any use would fail
    limit = manager.crypto.max_plaintext_bytes
    per_chunk = max(1, min(crypto_module.CHUNK_ITEMS, crypto_module.CHUNK_COST // limit))
    items = [EncryptItem("f", bytes([i % 256]) * 32, {"i": str(i % 3)}) for i in range(per_chunk * 2 + 1)]
    result = await manager.crypto.encrypt_batch(items)
    assert yields == [0, 0]  # three chunks
    opened = await manager.crypto.decrypt_batch(
        [DecryptItem("f", c, item.context) for c, item in zip(result.results, items, strict=True)]  # type: ignore[arg-type]
    )
    assert [o.plaintext for o in opened] == [item.plaintext for item in items]  # type: ignore[union-attr]


def blind(manager: KMSManager, field: str, value: str) -> str:
    return manager.crypto.blind_index(field, value)


async def test_blind_index_normalization(manager: KMSManager) -> None:
    assert blind(manager, "email", " A@B.com ") == blind(manager, "email", "a@b.com")
    assert blind(manager, "phone", "+86 138-1234 5678") == blind(manager, "phone", "+8613812345678")
    assert blind(manager, "phone", " +1 (415) 555-2671 ") == blind(manager, "phone", "+14155552671")
    assert blind(manager, "name", "  Alice ") == blind(manager, "name", "Alice")
    assert blind(manager, "name", "Alice") != blind(manager, "name", "alice")
    assert blind(manager, "email", "a@b.com") != blind(manager, "name", "a@b.com")
    for value in ("a@b.com", "+8613812345678", "x"):
        assert re.fullmatch(r"[0-9a-f]{64}", blind(manager, "email", value))


@pytest.mark.parametrize("phone", ["13812345678", "+0123456", "+1", "+123456789012345678", "+86abc", ""])
async def test_blind_index_rejects_non_e164_phones(manager: KMSManager, phone: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        blind(manager, "phone", phone)
    assert exc.value.reason == "VALIDATION_ERROR"


async def test_blind_index_is_keyed(make_manager: Callable[..., KMSManager], manager: KMSManager) -> None:
    other = make_manager(seed=SEED + "-other")
    await other.initialize()
    try:
        assert blind(manager, "email", "a@b.com") != blind(other, "email", "a@b.com")
        # Blind indexes do not rotate with data keys.
        before = blind(manager, "email", "a@b.com")
        await manager.rotate("test")
        manager.crypto.clear_cache()
        assert blind(manager, "email", "a@b.com") == before
    finally:
        await other.close()


async def test_not_initialized_and_closed(make_manager: Callable[..., KMSManager]) -> None:
    m = make_manager()
    with pytest.raises(FailedPrecondition) as exc:
        await m.crypto.encrypt("f", b"v", {})
    assert exc.value.reason == "KMS_NOT_INITIALIZED"
    await m.initialize()
    sealed = await m.crypto.encrypt("f", b"v", {})
    m.crypto.blind_index("email", "a@b.com")
    await m.close()
    for call in (
        m.crypto.encrypt("f", b"v", {}),
        m.crypto.decrypt("f", sealed.ciphertext, {}),
        m.rotate("x"),
        m.active_key(),
    ):
        with pytest.raises(FailedPrecondition) as exc:
            await call
        assert exc.value.reason == "KMS_NOT_INITIALIZED"
    with pytest.raises(FailedPrecondition):
        m.crypto.blind_index("email", "a@b.com")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=100), st.binary(max_size=60).map(lambda b: b"\xa7\x01" + b)))
async def test_decrypting_random_bytes_gives_only_domain_reasons(manager: KMSManager, data: bytes) -> None:
    with pytest.raises(DomainError) as exc:
        await manager.crypto.decrypt("f", data, {})
    assert exc.value.reason in {"CIPHERTEXT_INVALID", "KEY_NOT_FOUND"}


async def test_cbc_configuration_is_refused_at_start(make_manager: Callable[..., KMSManager]) -> None:
    from internal.conf.config import Kms

    m = make_manager()
    m.config = Kms.model_construct(**{**m.config.model_dump(), "algorithm": "AES-256-CBC"})
    with pytest.raises(InvalidArgument) as exc:
        await m.initialize()
    assert exc.value.reason == "VALIDATION_ERROR" and "AES-256-CBC" in exc.value.message


async def test_clear_cache_lets_go_of_the_sealer_and_its_key(manager: KMSManager) -> None:
    first = await manager.crypto.encrypt("f", b"v", {})
    sealer = manager.crypto._current_sealer
    assert sealer is not None
    manager.crypto.clear_cache()
    assert manager.crypto._current_sealer is None
    second = await manager.crypto.encrypt("f", b"v", {})
    assert manager.crypto._current_sealer is not sealer, "a fresh sealer for the reloaded key"
    assert first.key_version == second.key_version
    assert await manager.crypto.decrypt("f", first.ciphertext, {}) == b"v"
