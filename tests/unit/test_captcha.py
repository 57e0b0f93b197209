"""CaptchaUsecase over in-memory fakes: validation, throttling, hashing, verify/consume semantics."""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from internal.biz.captcha import (
    IMAGE,
    CaptchaCheck,
    CaptchaRecord,
    CaptchaSettings,
    CaptchaUsecase,
    CodeSenders,
)
from internal.biz.errors import InvalidArgument, ResourceExhausted, Unavailable
from internal.biz.identifiers import normalize_email, normalize_phone
from internal.biz.masking import mask_email, mask_phone
from internal.biz.ports import RateDecision
from internal.conf.config import Auth, Captcha

KEY = secrets.token_bytes(32)
PHONE = "+8613812345678"
EMAIL_ADDR = "john.doe@example.com"


@dataclass
class _Entry:
    record: CaptchaRecord
    attempts: int = 0


class FakeStore:
    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.ttls: dict[str, timedelta] = {}

    async def save(self, captcha_id: str, record: CaptchaRecord, ttl: timedelta) -> None:
        self.entries[captcha_id] = _Entry(record)
        self.ttls[captcha_id] = ttl

    def _fail(self, captcha_id: str, entry: _Entry, failure: CaptchaCheck, max_attempts: int) -> CaptchaCheck:
        entry.attempts += 1
        if entry.attempts >= max_attempts:
            del self.entries[captcha_id]
            return CaptchaCheck.EXHAUSTED
        return failure

    async def check(self, captcha_id: str, code_hash: str, max_attempts: int) -> CaptchaCheck:
        entry = self.entries.get(captcha_id)
        if entry is None:
            return CaptchaCheck.UNKNOWN
        if hmac.compare_digest(entry.record.code_hash, code_hash):
            return CaptchaCheck.OK
        return self._fail(captcha_id, entry, CaptchaCheck.MISMATCH, max_attempts)

    async def consume(
        self,
        captcha_id: str,
        code_hash: str,
        target_digests: Collection[str],
        max_attempts: int,
        require_target: bool = False,
    ) -> CaptchaCheck:
        entry = self.entries.get(captcha_id)
        if entry is None:
            return CaptchaCheck.UNKNOWN
        if not hmac.compare_digest(entry.record.code_hash, code_hash):
            return self._fail(captcha_id, entry, CaptchaCheck.MISMATCH, max_attempts)
        exempt = entry.record.captcha_type == IMAGE and not require_target
        if not exempt and entry.record.target not in target_digests:
            return self._fail(captcha_id, entry, CaptchaCheck.WRONG_TARGET, max_attempts)
        del self.entries[captcha_id]
        return CaptchaCheck.OK

    async def delete(self, captcha_id: str) -> None:
        self.entries.pop(captcha_id, None)


@dataclass
class FakeSender:
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    fail: bool = False

    async def send(self, target: str, code: str, purpose: str) -> None:
        if self.fail:
            raise Unavailable("SERVICE_UNAVAILABLE", "delivery failed")
        self.sent.append((target, code, purpose))

    def last_code(self) -> str:
        return self.sent[-1][1]


class FakeRenderer:
    def __init__(self) -> None:
        self.codes: list[str] = []

    def render(self, code: str) -> bytes:
        self.codes.append(code)
        return b"\x89PNG fake"


class FakeLimiter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls: list[tuple[str, int, float]] = []

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        self.calls.append((bucket, limit, window_seconds))
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        if self.counts[bucket] > limit:
            return RateDecision(False, 41.2)
        return RateDecision(True, 0.0)


@dataclass
class Env:
    usecase: CaptchaUsecase
    store: FakeStore
    email: FakeSender
    sms: FakeSender
    renderer: FakeRenderer
    limiter: FakeLimiter


def make(settings: CaptchaSettings | None = None) -> Env:
    store, email, sms, renderer, limiter = FakeStore(), FakeSender(), FakeSender(), FakeRenderer(), FakeLimiter()
    usecase = CaptchaUsecase(
        settings or CaptchaSettings(), store, renderer, CodeSenders(email=email, sms=sms), limiter, KEY
    )
    return Env(usecase, store, email, sms, renderer, limiter)


# --- issue -----------------------------------------------------------------------------------------


async def test_image_issue_renders_stores_hash_with_ttl() -> None:
    env = make()
    challenge = await env.usecase.issue("image", "", "1.2.3.4")
    assert challenge.image_png == b"\x89PNG fake"
    assert len(challenge.captcha_id) >= 22  # ≥ 128 bits URL-safe
    code = env.renderer.codes[-1]
    assert len(code) == 6 and code.isdigit()
    entry = env.store.entries[challenge.captcha_id]
    assert entry.record.captcha_type == "image" and entry.record.target == ""
    assert code not in entry.record.code_hash and len(entry.record.code_hash) == 64
    assert env.store.ttls[challenge.captcha_id] == timedelta(minutes=5)
    assert await env.usecase.verify(challenge.captcha_id, code)


async def test_ids_and_codes_are_random() -> None:
    env = make()
    ids = {(await env.usecase.issue("image", "", "c")).captcha_id for _ in range(50)}
    assert len(ids) == 50
    assert len(set(env.renderer.codes)) > 40


async def test_sms_issue_normalizes_and_sends() -> None:
    env = make(CaptchaSettings(length=8))
    challenge = await env.usecase.issue("sms", " +86 138 1234 5678 ", "c")
    assert challenge.image_png is None
    target, code, purpose = env.sms.sent[-1]
    assert target == PHONE and len(code) == 8 and code.isdigit() and purpose
    record = env.store.entries[challenge.captcha_id].record
    assert record.captcha_type == "sms" and PHONE not in record.target and len(record.target) == 64


async def test_email_issue_normalizes_and_sends() -> None:
    env = make()
    await env.usecase.issue("email", "  John.Doe@Example.COM ", "c")
    assert env.email.sent[-1][0] == EMAIL_ADDR
    assert env.sms.sent == []


@pytest.mark.parametrize(
    ("captcha_type", "target"),
    [
        ("voice", PHONE),
        ("", ""),
        ("IMAGE", ""),
        ("sms", "13812345678"),
        ("sms", "+1000"),
        ("sms", "not a phone"),
        ("sms", "+" + "1" * 100),
        ("email", "no-at-sign"),
        ("email", "a@b"),
        ("email", ""),
        ("email", "x" * 300 + "@example.com"),
    ],
)
async def test_invalid_type_or_target(captcha_type: str, target: str) -> None:
    env = make()
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.issue(captcha_type, target, "c")
    assert err.value.reason == "VALIDATION_ERROR"
    assert env.store.entries == {} and env.sms.sent == [] and env.email.sent == []


async def test_rate_limited_per_target() -> None:
    env = make(CaptchaSettings(send_limit_per_target=2, send_limit_per_client=100))
    for client in ("a", "b"):
        await env.usecase.issue("sms", PHONE, client)
    with pytest.raises(ResourceExhausted) as err:
        await env.usecase.issue("sms", PHONE, "c")
    assert err.value.reason == "RATE_LIMITED"
    assert err.value.metadata == {"retry_after": str(math.ceil(41.2))}
    assert len(env.sms.sent) == 2
    await env.usecase.issue("sms", "+14155552671", "c")  # another target is fine


async def test_rate_limited_per_client() -> None:
    env = make(CaptchaSettings(send_limit_per_target=100, send_limit_per_client=2))
    await env.usecase.issue("sms", PHONE, "1.1.1.1")
    await env.usecase.issue("email", EMAIL_ADDR, "1.1.1.1")
    with pytest.raises(ResourceExhausted):
        await env.usecase.issue("email", "other@example.com", "1.1.1.1")
    await env.usecase.issue("email", "other@example.com", "2.2.2.2")


async def test_image_rate_limited_per_client() -> None:
    env = make(CaptchaSettings(image_limit_per_client=3))
    for _ in range(3):
        await env.usecase.issue("image", "", "1.1.1.1")
    with pytest.raises(ResourceExhausted):
        await env.usecase.issue("image", "", "1.1.1.1")
    assert len(env.renderer.codes) == 3


async def test_target_buckets_hold_no_plaintext_and_use_window() -> None:
    env = make(CaptchaSettings(send_window=timedelta(minutes=10)))
    await env.usecase.issue("email", EMAIL_ADDR, "9.9.9.9")
    buckets = [bucket for bucket, _, _ in env.limiter.calls]
    assert not any(EMAIL_ADDR in b for b in buckets)
    assert {window for _, _, window in env.limiter.calls} == {600.0}


async def test_send_failure_removes_captcha_and_propagates() -> None:
    env = make()
    env.sms.fail = True
    with pytest.raises(Unavailable):
        await env.usecase.issue("sms", PHONE, "c")
    assert env.store.entries == {}


async def test_send_logs_masked_target_only(caplog: pytest.LogCaptureFixture) -> None:
    env = make()
    with caplog.at_level(logging.DEBUG):
        await env.usecase.issue("email", EMAIL_ADDR, "c")
    code = env.email.last_code()
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert EMAIL_ADDR not in text and code not in text
    assert "j***@example.com" in text


# --- verify ----------------------------------------------------------------------------------------


async def test_verify_does_not_consume() -> None:
    env = make()
    challenge = await env.usecase.issue("image", "", "c")
    code = env.renderer.codes[-1]
    assert await env.usecase.verify(challenge.captcha_id, code)
    assert await env.usecase.verify(challenge.captcha_id, f" {code} ")
    await env.usecase.consume(challenge.captcha_id, code)
    assert not await env.usecase.verify(challenge.captcha_id, code)


async def test_verify_wrong_attempts_exhaust() -> None:
    env = make(CaptchaSettings(max_attempts=3))
    challenge = await env.usecase.issue("image", "", "c")
    code = env.renderer.codes[-1]
    wrong = "x" + code[1:]
    assert not await env.usecase.verify(challenge.captcha_id, wrong)
    assert not await env.usecase.verify(challenge.captcha_id, wrong)
    assert await env.usecase.verify(challenge.captcha_id, code)  # 2 < 3: still alive
    assert not await env.usecase.verify(challenge.captcha_id, wrong)  # third: deleted
    assert not await env.usecase.verify(challenge.captcha_id, code)


@pytest.mark.parametrize(
    ("captcha_id", "code"), [("", "123456"), ("nonexistent-id-0000000000", "123456"), ("a*b", "1"), ("x" * 500, "1")]
)
async def test_verify_unknown_is_false(captcha_id: str, code: str) -> None:
    env = make()
    await env.usecase.issue("image", "", "c")
    assert await env.usecase.verify(captcha_id, code) is False


async def test_verify_empty_code_is_false_and_not_counted() -> None:
    env = make(CaptchaSettings(max_attempts=1))
    challenge = await env.usecase.issue("image", "", "c")
    assert not await env.usecase.verify(challenge.captcha_id, "  ")
    assert await env.usecase.verify(challenge.captcha_id, env.renderer.codes[-1])


# --- consume ---------------------------------------------------------------------------------------


async def test_consume_once() -> None:
    env = make()
    challenge = await env.usecase.issue("image", "", "c")
    code = env.renderer.codes[-1]
    await env.usecase.consume(challenge.captcha_id, code, ["ignored@example.com"])
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, code)
    assert err.value.reason == "CAPTCHA_EXPIRED"


@pytest.mark.parametrize(("captcha_id", "code"), [("", "123456"), ("some-id-000000000000", ""), ("", "")])
async def test_consume_missing_input(captcha_id: str, code: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await make().usecase.consume(captcha_id, code)
    assert err.value.reason == "CAPTCHA_REQUIRED"


async def test_consume_unknown_id_is_expired() -> None:
    env = make()
    for captcha_id in ("unknown-id-000000000000000", "bad id!"):
        with pytest.raises(InvalidArgument) as err:
            await env.usecase.consume(captcha_id, "123456")
        assert err.value.reason == "CAPTCHA_EXPIRED"


async def test_consume_wrong_code_then_exhausted() -> None:
    env = make(CaptchaSettings(max_attempts=2))
    challenge = await env.usecase.issue("image", "", "c")
    code = env.renderer.codes[-1]
    wrong = str((int(code) + 1) % 10**6).zfill(6)
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, wrong)
    assert err.value.reason == "CAPTCHA_INVALID"
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(challenge.captcha_id, wrong)
    assert err.value.reason == "CAPTCHA_INVALID"
    with pytest.raises(InvalidArgument) as err:  # gone after the last attempt, even with the right code
        await env.usecase.consume(challenge.captcha_id, code)
    assert err.value.reason == "CAPTCHA_EXPIRED"


async def test_consume_bound_to_email_target() -> None:
    env = make()
    challenge = await env.usecase.issue("email", EMAIL_ADDR, "c")
    code = env.email.last_code()
    for targets in ((), ["mallory@example.com"], [PHONE], ["not an address"]):
        with pytest.raises(InvalidArgument) as err:
            await env.usecase.consume(challenge.captcha_id, code, targets)
        assert err.value.reason == "CAPTCHA_INVALID"
    await env.usecase.consume(challenge.captcha_id, code, ["", " JOHN.DOE@example.com", PHONE])


async def test_consume_bound_to_phone_target() -> None:
    env = make()
    challenge = await env.usecase.issue("sms", PHONE, "c")
    code = env.sms.last_code()
    with pytest.raises(InvalidArgument):
        await env.usecase.consume(challenge.captcha_id, code, ["+14155552671"])
    await env.usecase.consume(challenge.captcha_id, code, ("+86 138-1234-5678",))


async def test_proof_of_ownership_refuses_image_captchas() -> None:
    """require_target (registration): only a code sent to the address proves it; an image captcha does not."""
    env = make()
    image = await env.usecase.issue("image", "", "c")
    with pytest.raises(InvalidArgument) as err:
        await env.usecase.consume(image.captcha_id, env.renderer.codes[-1], [EMAIL_ADDR], require_target=True)
    assert err.value.reason == "CAPTCHA_INVALID"
    emailed = await env.usecase.issue("email", EMAIL_ADDR, "c")
    await env.usecase.consume(emailed.captcha_id, env.email.last_code(), [EMAIL_ADDR], require_target=True)


async def test_client_limits_count_per_network_prefix() -> None:
    """Neighbours in one IPv4 /24 or IPv6 /64 share a budget; another network has its own."""
    env = make(CaptchaSettings(image_limit_per_client=2))
    await env.usecase.issue("image", "", "203.0.113.7")
    await env.usecase.issue("image", "", "203.0.113.200")
    with pytest.raises(ResourceExhausted):
        await env.usecase.issue("image", "", "203.0.113.9")
    await env.usecase.issue("image", "", "203.0.114.9")
    await env.usecase.issue("image", "", "2001:db8:1:2::1")
    await env.usecase.issue("image", "", "2001:db8:1:2:ffff::1")
    with pytest.raises(ResourceExhausted):
        await env.usecase.issue("image", "", "2001:db8:1:2::99")


async def test_code_hash_depends_on_key_and_id() -> None:
    env = make()
    other = CaptchaUsecase(
        CaptchaSettings(),
        env.store,
        env.renderer,
        CodeSenders(env.email, env.sms),
        env.limiter,
        secrets.token_bytes(32),  # another replica with the wrong secret
    )
    challenge = await env.usecase.issue("image", "", "c")
    code = env.renderer.codes[-1]
    assert not await other.verify(challenge.captcha_id, code)
    assert await env.usecase.verify(challenge.captcha_id, code)


# --- settings and helpers --------------------------------------------------------------------------


def test_enabled_mirrors_config() -> None:
    assert CaptchaSettings.from_conf(Auth()).enabled
    assert not CaptchaSettings.from_conf(Auth(captcha_enabled=False)).enabled
    settings = CaptchaSettings.from_conf(
        Auth(captcha=Captcha(length=8, max_attempts=3, send_limit_per_target=2, expiration=timedelta(minutes=2)))
    )
    assert (settings.length, settings.max_attempts, settings.send_limit_per_target) == (8, 3, 2)
    assert settings.expiration == timedelta(minutes=2)
    env = make(replace(CaptchaSettings(), enabled=False))
    assert env.usecase.enabled is False


def test_short_code_key_refused() -> None:
    with pytest.raises(ValueError):
        CaptchaUsecase(
            CaptchaSettings(),
            FakeStore(),
            FakeRenderer(),
            CodeSenders(FakeSender(), FakeSender()),
            FakeLimiter(),
            b"short",
        )


def test_normalizers() -> None:
    assert normalize_email("  A.B@Example.Com ") == "a.b@example.com"
    assert normalize_phone("+1 (415) 555-2671") == "+14155552671"


@pytest.mark.parametrize(
    ("value", "masked"),
    [("john@example.com", "j***@example.com"), ("@example.com", "***@example.com"), ("nope", "***")],
)
def test_mask_email(value: str, masked: str) -> None:
    assert mask_email(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [("+8613812345678", "+86138****5678"), ("+14155552671", "+141****2671"), ("12", "**"), ("", "")],
)
def test_mask_phone(value: str, masked: str) -> None:
    assert mask_phone(value) == masked


def test_mask_phone_hides_most_digits() -> None:
    for number in ("+8613812345678", "+14155552671", "+447911123456", "+49301234567"):
        masked = mask_phone(number)
        assert len(masked) == len(number) and masked.count("*") >= 4 and masked.endswith(number[-4:])
