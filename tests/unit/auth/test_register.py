"""Registration: input rules, captcha, encrypted PII, duplicates."""

from __future__ import annotations

import pytest

from internal.biz import pii
from internal.biz.auth import Registration
from internal.biz.errors import Conflict, InvalidArgument, ResourceExhausted
from tests.unit.auth.fakes import build_world


def reg(**overrides: str) -> Registration:
    values = {"username": "alice_1", "password": "s3cretpass", "email": "Alice@Example.com", "phone": ""}
    values.update(overrides)
    return Registration(**values)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "ab"),
        ("username", "a" * 33),
        ("username", "1abc"),
        ("username", "ali ce"),
        ("username", "alice-1"),
        ("username", ""),
        ("email", ""),
        ("email", "not-an-email"),
        ("email", "a@b"),
        ("email", "x" * 250 + "@example.com"),
        ("phone", "13812345678"),
        ("phone", "+1"),
        ("phone", "+86abc"),
    ],
)
async def test_invalid_input_names_the_field(field: str, value: str) -> None:
    w = build_world()
    with pytest.raises(InvalidArgument) as err:
        await w.auth.register(reg(**{field: value}))
    assert err.value.reason == "VALIDATION_ERROR"
    assert err.value.metadata["field"] == field
    assert not w.users.rows


@pytest.mark.parametrize(
    "password",
    [
        "short1",
        "x" * 127 + "1" * 2,
        "password1",  # common (the zxcvbn package's leaked-password list)
        "Qwertyuiop",  # common, whatever its case
        "my-alice_1-pass",  # contains the username
        "ALICE@home-2024",  # contains the email's local part
        "tab\there-pass",  # control character
        "ｐａｓｓｗｏｒｄ１",  # fullwidth "password1": NFKC before the list check
    ],
)
async def test_weak_passwords_are_refused(password: str) -> None:
    w = build_world()
    with pytest.raises(InvalidArgument) as err:
        await w.auth.register(reg(password=password))
    assert err.value.reason == "PASSWORD_WEAK"
    assert err.value.metadata == {"field": "password"}


@pytest.mark.parametrize(
    "password", ["correct horse battery staple", "onlyletters", "12345678901", "Ünïcødé-Ωmega", "密码密码密码密码"]
)
async def test_no_composition_rules(password: str) -> None:
    w = build_world()
    await w.auth.register(reg(password=password))


async def test_long_passphrase_up_to_the_limit_is_accepted() -> None:
    w = build_world()
    await w.auth.register(reg(password="correct horse battery staple 42" + "x" * 97))


async def test_username_boundaries() -> None:
    w = build_world()
    await w.auth.register(reg(username="abc", email="a@example.com"))
    await w.auth.register(reg(username="A" + "b_1" * 10 + "z", email="b@example.com"))


async def test_pii_is_encrypted_bound_to_the_row_and_indexed() -> None:
    w = build_world()
    w.cipher.key_version = 7
    user_id = await w.auth.register(reg(phone="+86 138 1234 5678"))
    row = w.users.rows[user_id]
    assert b"Alice" not in row["email_encrypted"] and "alice" not in row["email_hash"]
    ctx = pii.user_context(user_id)
    assert await w.cipher.decrypt(pii.EMAIL, row["email_encrypted"], ctx) == b"alice@example.com"
    assert await w.cipher.decrypt(pii.PHONE, row["phone_encrypted"], ctx) == b"+8613812345678"
    assert row["email_hash"] == w.cipher.blind_index(pii.EMAIL, "alice@example.com")
    assert row["phone_hash"] == w.cipher.blind_index(pii.PHONE, "+8613812345678")
    assert row["pii_key_version"] == 7
    assert row["password_hash"].startswith("$fake$") and "s3cretpass" not in row["password_hash"]


async def test_name_is_supported_and_encrypted() -> None:
    w = build_world()
    user_id = await w.auth.register(reg(name="Alice Liddell"))
    row = w.users.rows[user_id]
    assert await w.cipher.decrypt(pii.NAME, row["name_encrypted"], pii.user_context(user_id)) == b"Alice Liddell"


@pytest.mark.parametrize(
    "dup",
    [
        {"username": "ALICE_1", "email": "other@example.com"},
        {"username": "bob", "email": " alice@EXAMPLE.com "},
        {"username": "carol", "email": "c@example.com", "phone": "+8613812345678"},
        {"username": "ａlice_1", "email": "other@example.com"},  # fullwidth a: NFKC
        {"username": "a1ice_1", "email": "other@example.com"},  # digit 1 for l: TR 39 skeleton
        {"username": "bob", "email": "аlice@example.com"},  # Cyrillic а in the local part
        {"username": "bob", "email": "ａlice@example.com"},  # fullwidth a in the local part
    ],
)
async def test_duplicates_answer_user_exists_without_naming_the_field(dup: dict[str, str]) -> None:
    w = build_world()
    await w.auth.register(reg(phone="+8613812345678"))
    with pytest.raises(Conflict) as err:
        await w.auth.register(reg(**dup))
    assert err.value.reason == "USER_EXISTS"
    assert "field" not in err.value.metadata


async def test_registration_proves_the_email_and_the_phone() -> None:
    """Pre-account-takeover: only codes sent to the address and the phone register them (no image captcha)."""
    w = build_world(captcha_enabled=True)
    with pytest.raises(InvalidArgument) as err:
        await w.auth.register(reg())
    assert err.value.reason == "CAPTCHA_REQUIRED"
    for code in ("424242", "424242@mallory@example.com", "000000@alice@example.com"):
        with pytest.raises(InvalidArgument) as err:  # an image captcha, a code sent elsewhere, a wrong code
            await w.auth.register(reg(captcha_id="c1", captcha_code=code))
        assert err.value.reason == "CAPTCHA_INVALID"
    email_proof = {"captcha_id": "c1", "captcha_code": "424242@alice@example.com"}
    with pytest.raises(InvalidArgument) as err:  # a phone needs its own proof
        await w.auth.register(reg(phone="+8613812345678", **email_proof))
    assert err.value.reason == "CAPTCHA_REQUIRED"
    with pytest.raises(InvalidArgument) as err:
        await w.auth.register(
            reg(phone="+8613812345678", phone_captcha_id="p1", phone_captcha_code="424242", **email_proof)
        )
    assert err.value.reason == "CAPTCHA_INVALID"
    assert not w.users.rows
    await w.auth.register(
        reg(phone="+8613812345678", phone_captcha_id="p1", phone_captcha_code="424242@+8613812345678", **email_proof)
    )
    assert w.captcha.consumed[-2:] == [
        ("c1", "424242@alice@example.com", ("alice@example.com",)),
        ("p1", "424242@+8613812345678", ("+8613812345678",)),
    ]


async def test_invalid_input_does_not_burn_the_captcha() -> None:
    w = build_world(captcha_enabled=True)
    with pytest.raises(InvalidArgument):
        await w.auth.register(reg(username="x", captcha_id="c1", captcha_code="424242"))
    assert w.captcha.consumed == []


async def test_registration_is_rate_limited_per_client() -> None:
    """The limit is per client network: the throttled network is refused, another one still registers."""
    w = build_world()
    w.limiter.limit = 1
    await w.auth.register(reg(), "10.0.0.1")
    with pytest.raises(ResourceExhausted) as err:
        await w.auth.register(reg(username="bob", email="b@example.com"), "10.0.0.7")  # the same /24
    assert err.value.reason == "RATE_LIMITED"
    assert err.value.metadata["retry_after"] == "13"
    await w.auth.register(reg(username="carol", email="c@example.com"), "10.0.1.1")  # another /24
    assert len(w.users.rows) == 2


async def test_register_is_audited_without_pii() -> None:
    w = build_world()
    user_id = await w.auth.register(reg(phone="+8613812345678"), "10.0.0.9")
    assert w.audit.events == [
        {
            "event": "auth.register",
            "outcome": "success",
            "actor": None,
            "subject": str(user_id),
            "details": {"client": "10.0.0.9"},
        }
    ]


async def test_rows_from_before_the_keys_get_them_and_then_block_their_twins() -> None:
    w = build_world()
    old = await w.auth.register(reg())
    twin = await w.auth.register(reg(username="carol", email="carol@example.com"))
    for user_id in (old, twin):  # as stored before migration 000007
        w.users.rows[user_id].update(username_key=None, email_key_hash=None)
    w.users.rows[twin]["username"] = "a1ice_1"  # an older confusable twin of alice_1
    assert await w.profiles.backfill_identifier_keys(batch=1) == 1  # the twin keeps no key; both still work
    assert w.users.rows[old]["username_key"] == "alice_l" and w.users.rows[twin]["username_key"] is None
    assert await w.profiles.backfill_identifier_keys() == 0
    with pytest.raises(Conflict):
        await w.auth.register(reg(username="aIice_x", email="аlice@example.com"))  # Cyrillic а: the email's key
