"""Configuration → biz policy mappings used by the container."""

from __future__ import annotations

from datetime import timedelta

from internal.biz.auth import AuthPolicy
from internal.biz.lockout import LockoutPolicy
from internal.biz.password import Argon2Params
from internal.biz.token import TokenPolicy
from internal.conf.config import Argon2, Auth


def test_policies_from_conf() -> None:
    auth = Auth(
        max_login_attempts=7,
        hard_lock_attempts=70,
        login_delay=timedelta(seconds=2),
        login_delay_max=timedelta(minutes=5),
        lock_duration=timedelta(minutes=3),
        login_rate_limit=11,
        login_rate_window=timedelta(seconds=90),
        password_max_length=256,
        argon2=Argon2(memory_kib=65536, iterations=3, lanes=2),
        access_token_expiration=timedelta(minutes=5),
        refresh_token_expiration=timedelta(days=1),
        refresh_token_absolute_lifetime=timedelta(days=2),
    )
    assert AuthPolicy.from_conf(auth) == AuthPolicy(256, 11, 90.0)
    assert LockoutPolicy.from_conf(auth) == LockoutPolicy(7, 2.0, 300.0, 70, 180.0)
    assert Argon2Params.from_conf(auth) == Argon2Params(65536, 3, 2)
    assert TokenPolicy.from_conf(auth) == TokenPolicy(timedelta(minutes=5), timedelta(days=1), timedelta(days=2))
    defaults = Auth()
    assert Argon2Params.from_conf(defaults) == Argon2Params()
    assert LockoutPolicy.from_conf(defaults) == LockoutPolicy()
    assert TokenPolicy.from_conf(defaults) == TokenPolicy()
