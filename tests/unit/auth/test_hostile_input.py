"""Random and hostile input to every auth use case yields a DomainError or success, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internal.biz.auth import LoginAttempt, Registration
from internal.biz.errors import DomainError
from internal.biz.ports import Caller
from tests.unit.auth.fakes import build_world

text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", " ", "@", "+", "+8613812345678", "a@b.co", "alice", "\x00", "ä" * 40, "1" * 6]),
)


def run(factory: Callable[[], Awaitable[Any]]) -> None:
    async def main() -> None:
        with contextlib.suppress(DomainError):
            await factory()

    asyncio.run(main())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(username=text, password=text, email=text, phone=text, name=text)
def test_register_never_crashes(username: str, password: str, email: str, phone: str, name: str) -> None:
    w = build_world()
    run(lambda: w.auth.register(Registration(username, password, email, phone, name), "1.2.3.4"))


@settings(max_examples=150, deadline=None)
@given(identifier=text, password=text, totp=text)
def test_login_never_crashes(identifier: str, password: str, totp: str) -> None:
    w = build_world()
    run(lambda: w.auth.login(LoginAttempt(identifier, password, totp_code=totp), "1.2.3.4"))


@settings(max_examples=150, deadline=None)
@given(token=text, username=text, code=text)
def test_token_and_totp_paths_never_crash(token: str, username: str, code: str) -> None:
    w = build_world()
    run(lambda: w.tokens.authenticate(token))
    run(lambda: w.tokens.refresh(token))
    run(lambda: w.tokens.introspect(Caller(scopes=frozenset({"auth.introspect"})), token))
    run(lambda: w.auth.lock_status(Caller(user_id=1), username))
    run(lambda: w.totp.confirm_enrollment(Caller(user_id=1), code))
