"""Data keys for callers over the real key ring and cipher (MemoryKeyRepo): wrapped under the named key's active
version and the caller's context, refused under another key or context, kept apart from field ciphertexts,
refused while the wrapping version is pending destruction, audited without key bytes."""

from __future__ import annotations

import pytest

from internal.biz.errors import FailedPrecondition, InvalidArgument
from internal.biz.kms_datakey import DATA_KEY_FIELD, DataKeyUsecase, refuse_reserved_field
from internal.pkg.kms.envelope import parse_header
from tests.unit.auth.fakes import FakeAudit
from tests.unit.kms.conftest import MakeKms
from tests.unit.kms.stack import KmsStack


@pytest.fixture
async def stack(make_kms: MakeKms) -> KmsStack:
    stack = await make_kms(audit=FakeAudit()).open()
    await stack.admin.create_key("orders")
    await stack.admin.create_key("payments")
    return stack


def data_keys(stack: KmsStack) -> DataKeyUsecase:
    return DataKeyUsecase(stack.cipher, stack.ring)


async def test_generate_then_decrypt_gives_the_same_key_under_the_active_version(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    generated = await usecase.generate("orders", {"tenant": "t1"}, caller="svc")
    assert len(generated.plaintext) == 32 and generated.algorithm == "AES-256-GCM"
    assert generated.plaintext not in generated.wrapped_key
    active = await stack.admin.active_version("orders")
    assert generated.key_version == active.version == parse_header(generated.wrapped_key).key_version
    opened = await usecase.decrypt("orders", generated.wrapped_key, {"tenant": "t1"}, caller="svc")
    assert opened.plaintext == generated.plaintext and opened.key_version == generated.key_version
    other = await usecase.generate("orders", {"tenant": "t1"}, caller="svc")
    assert other.plaintext != generated.plaintext  # a fresh key every call


async def test_still_opens_after_rotation(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    generated = await usecase.generate("orders", {}, caller="svc")
    await stack.admin.rotate("orders", "test")
    assert (await usecase.decrypt("orders", generated.wrapped_key, {}, caller="svc")).plaintext == generated.plaintext
    assert (await usecase.generate("orders", {}, caller="svc")).key_version == generated.key_version + 1


@pytest.mark.parametrize(
    ("key_name", "context"),
    [("payments", {"tenant": "t1"}), ("orders", {"tenant": "t2"}), ("orders", {}), ("default", {"tenant": "t1"})],
)
async def test_another_key_or_context_is_refused(stack: KmsStack, key_name: str, context: dict[str, str]) -> None:
    usecase = data_keys(stack)
    generated = await usecase.generate("orders", {"tenant": "t1"}, caller="svc")
    with pytest.raises(InvalidArgument) as caught:
        await usecase.decrypt(key_name, generated.wrapped_key, context, caller="svc")
    assert caught.value.reason == "CIPHERTEXT_INVALID"


async def test_tampered_or_malformed_wrapped_keys_are_refused(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    wrapped = (await usecase.generate("orders", {}, caller="svc")).wrapped_key
    flipped = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    for bad, reason in ((flipped, "CIPHERTEXT_INVALID"), (b"\xa7", "CIPHERTEXT_INVALID"), (b"", "VALIDATION_ERROR")):
        with pytest.raises(InvalidArgument) as caught:
            await usecase.decrypt("orders", bad, {}, caller="svc")
        assert caught.value.reason == reason
    with pytest.raises(InvalidArgument) as caught:
        await usecase.decrypt("orders", wrapped + b"x" * 300, {}, caller="svc")
    assert caught.value.reason == "VALIDATION_ERROR"


async def test_wrapped_keys_and_field_ciphertexts_never_pass_for_each_other(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    wrapped = (await usecase.generate("orders", {}, caller="svc")).wrapped_key
    # A wrapped key is not a field value under any ordinary field name...
    with pytest.raises(InvalidArgument):
        await stack.cipher.decrypt("orders", "email", wrapped, {})
    # ...and a field ciphertext of 32 chosen bytes is not a wrapped key.
    chosen = await stack.cipher.encrypt("orders", "email", b"k" * 32, {})
    with pytest.raises(InvalidArgument) as caught:
        await usecase.decrypt("orders", chosen.ciphertext, {}, caller="svc")
    assert caught.value.reason == "CIPHERTEXT_INVALID"
    # The field RPCs refuse the reserved field name itself.
    with pytest.raises(InvalidArgument) as caught:
        refuse_reserved_field(DATA_KEY_FIELD)
    assert caught.value.reason == "VALIDATION_ERROR"
    refuse_reserved_field("email")


async def test_pending_destruction_refuses_to_unwrap(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    generated = await usecase.generate("orders", {}, caller="svc")
    await stack.admin.rotate("orders", "retire the wrapping version")
    await stack.admin.schedule_destruction("orders", generated.key_version, waiting_period_seconds=8 * 86400)
    with pytest.raises(FailedPrecondition) as caught:
        await usecase.decrypt("orders", generated.wrapped_key, {}, caller="svc")
    assert caught.value.reason == "KEY_PENDING_DESTRUCTION"
    await stack.admin.cancel_destruction("orders", generated.key_version)
    assert (await usecase.decrypt("orders", generated.wrapped_key, {}, caller="svc")).plaintext == generated.plaintext


async def test_unknown_key_and_bad_context(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    with pytest.raises(Exception) as caught:
        await usecase.generate("nosuchkey", {}, caller="svc")
    assert getattr(caught.value, "reason", "") == "KEY_NOT_FOUND"
    with pytest.raises(InvalidArgument) as bad_context:
        await usecase.generate("orders", {"k": "v" * 2000}, caller="svc")
    assert bad_context.value.reason == "VALIDATION_ERROR"


async def test_every_call_is_audited_with_key_name_and_version_never_key_bytes(stack: KmsStack) -> None:
    usecase = data_keys(stack)
    generated = await usecase.generate("orders", {"tenant": "t1"}, caller="svc-a")
    await usecase.decrypt("orders", generated.wrapped_key, {"tenant": "t1"}, caller="svc-a")
    with pytest.raises(InvalidArgument):
        await usecase.decrypt("orders", generated.wrapped_key, {"tenant": "t2"}, caller="svc-a")
    assert isinstance(stack.audit, FakeAudit)
    events = [e for e in stack.audit.events if e["event"].startswith("kms.data_key")]
    assert [(e["event"], e["outcome"]) for e in events] == [
        ("kms.data_key_generate", "success"),
        ("kms.data_key_decrypt", "success"),
        ("kms.data_key_decrypt", "failure"),
    ]
    assert events[0]["details"] == {"key_name": "orders", "credential": "svc-a", "key_version": generated.key_version}
    assert events[2]["details"]["reason"] == "CIPHERTEXT_INVALID"
    for event in events:
        text = repr(event)
        assert generated.plaintext.hex() not in text and repr(generated.plaintext) not in text
    assert "plaintext" not in repr(generated) and repr(generated.plaintext) not in repr(generated)
