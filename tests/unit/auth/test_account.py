"""AccountUsecase over fakes: the rules of the lifecycle RPCs, without PostgreSQL or Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from internal.biz import pii
from internal.biz.account import (
    NOTICE_PASSWORD_CHANGED,
    NOTICE_PASSWORD_RESET,
    AccountPolicy,
    AccountUsecase,
    SessionInfo,
)
from internal.biz.auth import LoginAttempt, Registration
from internal.biz.captcha import CaptchaCheck, CaptchaSettings, CodeSenders
from internal.biz.errors import DomainError, InvalidArgument, NotFound, PermissionDenied
from internal.biz.lockout import user_account
from internal.biz.ports import Caller
from internal.biz.totp import generate_code, matching_step
from tests.unit.auth.fakes import FakeAudit, World, build_world, unique

PASSWORD = "unit passphrase 1"


class ErasingAudit(FakeAudit):
    async def forget_clients(self, party: str) -> int:
        touched = [e for e in self.events if party in (e.get("subject"), e.get("actor")) and "client" in e["details"]]
        for event in touched:
            event["details"] = {k: v for k, v in event["details"].items() if k != "client"}
        return len(touched)


@dataclass
class RecordingSender:
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    fail: bool = False

    async def send(self, target: str, code: str, purpose: str) -> None:
        if self.fail:
            raise OSError("delivery failed for " + target)
        self.sent.append((target, code, purpose))


class FakeResets:
    def __init__(self) -> None:
        self.codes: dict[str, dict[str, Any]] = {}
        self.saves = 0

    async def save(self, reset_id: str, code_hash: str, user_id: int, ttl: timedelta) -> None:
        self.saves += 1
        self.codes[reset_id] = {"hash": code_hash, "user": user_id, "attempts": 0}

    async def check(self, reset_id: str, code_hash: str, max_attempts: int) -> tuple[CaptchaCheck, int]:
        record = self.codes.get(reset_id)
        if record is None:
            return CaptchaCheck.UNKNOWN, 0
        if record["hash"] == code_hash:
            return CaptchaCheck.OK, int(record["user"])
        record["attempts"] += 1
        if record["attempts"] >= max_attempts:
            del self.codes[reset_id]
            return CaptchaCheck.EXHAUSTED, 0
        return CaptchaCheck.MISMATCH, 0

    async def consume(self, reset_id: str, code_hash: str) -> bool:
        record = self.codes.get(reset_id)
        if record is None or record["hash"] != code_hash:
            return False
        del self.codes[reset_id]
        return True


class FakeAccounts:
    """Reads the fake users and sessions the World holds."""

    def __init__(self, world: World) -> None:
        self._w = world
        self.lookups = 0

    async def active_sessions(self, user_id: int) -> list[SessionInfo]:
        now = datetime.now(UTC)
        return [
            SessionInfo(sid, now, None, now + timedelta(days=1), f.client_addr, f.user_agent)
            for sid, f in self._w.sessions.families.items()
            if f.user_id == user_id and not f.revoked
        ]

    async def owns_active_session(self, user_id: int, session_id: str) -> bool:
        family = self._w.sessions.families.get(session_id)
        return family is not None and family.user_id == user_id and not family.revoked

    async def find_active_user_id(self, kind: str, hashes: Sequence[str]) -> int | None:
        self.lookups += 1
        column = "email_hash" if kind == pii.EMAIL else "phone_hash"
        return next(
            (r["id"] for r in self._w.users.rows.values() if r[column] in hashes and not r["username"].startswith("~")),
            None,
        )

    async def replace_email(self, *args: Any) -> None:
        raise AssertionError("not used here")

    async def replace_phone(self, *args: Any) -> None:
        raise AssertionError("not used here")

    async def erase(self, user_id: int, password_hash: str, username_hash: str) -> list[str]:
        row = self._w.users.rows[user_id]
        row.update(username=f"~{user_id}", password_hash=password_hash, email_encrypted=None, phone_encrypted=None)
        gone = [sid for sid, f in self._w.sessions.families.items() if f.user_id == user_id]
        for sid in gone:
            del self._w.sessions.families[sid]
        return gone

    async def purge_deleted(self, grace: timedelta) -> int:
        return 0


@dataclass
class Setup:
    world: World
    accounts: AccountUsecase
    resets: FakeResets
    repo: FakeAccounts
    email: RecordingSender
    sms: RecordingSender


def setup() -> Setup:
    w = build_world()
    resets, repo, email, sms = FakeResets(), FakeAccounts(w), RecordingSender(), RecordingSender()
    audit = ErasingAudit(w.audit.events)
    accounts = AccountUsecase(
        users=w.users,
        accounts=repo,
        sessions=w.sessions,
        resets=resets,
        cipher=w.cipher,
        hasher=w.hasher,
        lockout=w.lockout,
        captcha=w.captcha,
        senders=CodeSenders(email=email, sms=sms),
        limiter=w.limiter,
        audit=audit,
        policy=AccountPolicy(codes=CaptchaSettings(send_limit_per_target=3)),
        code_key=b"k" * 32,
        clock=w.clock,
    )
    return Setup(w, accounts, resets, repo, email, sms)


async def member(s: Setup) -> tuple[int, str, Caller]:
    name = unique("acc")
    email = f"{name}@example.com"
    user_id = await s.world.auth.register(Registration(name, PASSWORD, email, f"+8613{uuid.uuid4().int % 10**9:09d}"))
    pair = await s.world.auth.login(LoginAttempt(name, PASSWORD))
    return user_id, email, await s.world.tokens.authenticate(pair.access_token)


async def code_sent(sender: RecordingSender) -> str:
    for _ in range(100):  # sent in the background, within the jitter
        if sender.sent:
            return sender.sent[-1][1]
        await asyncio.sleep(0.01)
    raise AssertionError("nothing sent")


async def test_reset_request_does_the_same_work_whether_or_not_the_address_has_an_account() -> None:
    s = setup()
    _, email, _ = await member(s)
    before = (dict(s.world.limiter.hits), s.resets.saves, s.repo.lookups, len(s.world.audit.events))
    known = await s.accounts.request_reset(email)
    after_known = (dict(s.world.limiter.hits), s.resets.saves, s.repo.lookups, len(s.world.audit.events))
    unknown = await s.accounts.request_reset("nobody@example.com")
    after_unknown = (dict(s.world.limiter.hits), s.resets.saves, s.repo.lookups, len(s.world.audit.events))

    def work(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[int, int, int, int]:
        return (sum(b[0].values()) - sum(a[0].values()), b[1] - a[1], b[2] - a[2], b[3] - a[3])

    assert work(before, after_known) == work(after_known, after_unknown) == (2, 1, 1, 1)
    assert len(known) == len(unknown) == 32
    await code_sent(s.email)
    await asyncio.sleep(0.3)
    assert [t for t, _, _ in s.email.sent] == [email]  # nothing went to the unknown address
    # The store sees the code only as a keyed hash.
    assert all(len(r["hash"]) == 64 and s.email.sent[0][1] not in r["hash"] for r in s.resets.codes.values())


async def test_a_failed_send_is_not_visible_in_the_reply_and_logs_no_address(caplog: pytest.LogCaptureFixture) -> None:
    s = setup()
    _, email, _ = await member(s)
    s.email.fail = True
    with caplog.at_level(logging.WARNING):
        assert len(await s.accounts.request_reset(email)) == 32
        await asyncio.sleep(0.4)
    assert "not delivered" in caplog.text and email not in caplog.text


async def test_reset_requests_are_limited_per_target() -> None:
    s = setup()
    for _ in range(3):
        await s.accounts.request_reset("limited@example.com")
    with pytest.raises(DomainError) as caught:
        await s.accounts.request_reset("Limited@Example.com")  # the same target once normalised
    assert caught.value.reason == "RATE_LIMITED"


async def test_confirm_reset_ends_every_session_and_clears_the_lock() -> None:
    s = setup()
    user_id, email, caller = await member(s)
    await s.world.lockout.lock(user_account(user_id))
    reset_id = await s.accounts.request_reset(email)
    code = await code_sent(s.email)
    with pytest.raises(InvalidArgument) as weak:
        await s.accounts.confirm_reset(reset_id, code, "password")
    assert weak.value.reason == "PASSWORD_WEAK" and reset_id in s.resets.codes  # not spent
    await s.accounts.confirm_reset(reset_id, code, "a brand new passphrase")
    assert s.world.sessions.families[caller.session_id].revoked == "password_reset"
    assert not (await s.world.lockout.status(user_account(user_id))).locked
    with pytest.raises(InvalidArgument) as again:
        await s.accounts.confirm_reset(reset_id, code, "a brand new passphrase")
    assert again.value.reason == "CAPTCHA_EXPIRED"


async def test_change_password_keeps_the_calling_session_only() -> None:
    s = setup()
    user_id, _, caller = await member(s)
    other = await s.world.tokens.issue(user_id, caller.username)
    other_caller = await s.world.tokens.authenticate(other.access_token)
    assert await s.accounts.change_password(caller, PASSWORD, "another good passphrase") == 1
    assert not s.world.sessions.families[caller.session_id].revoked
    assert s.world.sessions.families[other_caller.session_id].revoked == "password_changed"
    row = s.world.users.rows[user_id]
    assert row["password_hash"].endswith(hashlib.sha256(b"another good passphrase").hexdigest())


async def test_naming_another_account_is_denied_alike_whether_it_exists_admins_learn_which() -> None:
    s = setup()
    _, _, alice = await member(s)
    _, _, bob = await member(s)
    for name in (bob.username, "nobody_here"):
        with pytest.raises(PermissionDenied):
            await s.accounts.list_sessions(alice, name)
    admin = Caller(scopes=frozenset({"auth.admin"}))
    assert len(await s.accounts.list_sessions(admin, bob.username)) == 1
    with pytest.raises(NotFound):
        await s.accounts.list_sessions(admin, "nobody_here")
    with pytest.raises(PermissionDenied):
        await s.accounts.list_sessions(admin)  # an admin has no sessions of its own


async def test_a_reset_code_for_an_account_deleted_meanwhile_is_expired() -> None:
    s = setup()
    _, email, caller = await member(s)
    reset_id = await s.accounts.request_reset(email)
    code = await code_sent(s.email)
    await s.accounts.delete_account(caller, PASSWORD)
    with pytest.raises(InvalidArgument) as caught:
        await s.accounts.confirm_reset(reset_id, code, "a brand new passphrase")
    assert caught.value.reason == "CAPTCHA_EXPIRED"
    assert [e["details"] for e in s.world.audit.events if e["event"] == "account.delete"] == [{"by": "self"}]
    about = [e for e in s.world.audit.events if str(caller.user_id) in (e["subject"], e["actor"])]
    assert {"auth.register", "auth.login", "account.delete"} <= {e["event"] for e in about}
    assert not any("client" in e["details"] for e in about)


async def test_password_change_and_reset_notify_the_owner_without_secrets() -> None:
    s = setup()
    user_id, email, caller = await member(s)
    await s.accounts.change_password(caller, PASSWORD, "another good passphrase")
    assert s.email.sent == [(email, "", NOTICE_PASSWORD_CHANGED)]
    s.email.sent.clear()
    reset_id = await s.accounts.request_reset(email)
    code = await code_sent(s.email)
    await s.accounts.confirm_reset(reset_id, code, "a brand new passphrase")
    assert s.email.sent == [(email, code, "password reset"), (email, "", NOTICE_PASSWORD_RESET)]
    notice = repr(s.email.sent[-1])
    assert all(secret not in notice for secret in (PASSWORD, "another good passphrase", "a brand new passphrase", code))

    # Without an email the phone is told; a failed delivery does not undo the change.
    _, _, phone_only = await member(s)
    assert phone_only.user_id is not None
    s.world.users.rows[phone_only.user_id]["email_encrypted"] = None
    s.sms.fail = True
    assert await s.accounts.change_password(phone_only, PASSWORD, "phone owner passphrase 2") == 0
    s.sms.fail = False
    await s.accounts.change_password(phone_only, "phone owner passphrase 2", "phone owner passphrase 3")
    assert [(code, purpose) for _, code, purpose in s.sms.sent] == [("", NOTICE_PASSWORD_CHANGED)]
    assert s.sms.sent[0][0].startswith("+8613")
    assert user_id != phone_only.user_id


async def test_with_totp_a_missing_code_is_not_counted_a_wrong_one_is_and_the_right_one_passes() -> None:
    s = setup()
    user_id, _, caller = await member(s)
    secret = base64.b32decode((await s.world.totp.begin_enrollment(caller, PASSWORD)).secret)
    now = s.world.clock()
    await s.world.totp.confirm_enrollment(caller, generate_code(secret, now))
    account = user_account(user_id)
    before = s.world.guard.failures.get(account, 0)

    with pytest.raises(DomainError) as missing:
        await s.accounts.delete_account(caller, PASSWORD)
    assert missing.value.reason == "TOTP_REQUIRED" and s.world.guard.failures.get(account, 0) == before
    wrong = next(
        c for c in (generate_code(secret, now + 60 * i) for i in range(2, 100)) if matching_step(secret, c, now) is None
    )
    with pytest.raises(DomainError) as invalid:
        await s.accounts.delete_account(caller, PASSWORD, totp_code=wrong)
    assert invalid.value.reason == "TOTP_INVALID" and s.world.guard.failures.get(account, 0) == before + 1
    with pytest.raises(DomainError) as no_oracle:
        await s.accounts.delete_account(caller, "not the password", totp_code=generate_code(secret, now + 30))
    assert no_oracle.value.reason == "INVALID_CREDENTIALS"
    await s.accounts.delete_account(caller, PASSWORD, totp_code=generate_code(secret, now + 30))
    assert s.world.users.rows[user_id]["username"].startswith("~")
