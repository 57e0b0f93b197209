"""Configuration: YAML + APP__ environment overrides, shortcuts, and errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from internal.conf.config import ConfigError, load_config
from internal.conf.duration import parse_duration
from internal.container import account_policy

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_with_kratos_shaped_defaults() -> None:
    config = load_config(ROOT / "configs", environ={})
    assert config.server.grpc.addr == "0.0.0.0:9000"
    assert config.server.http.addr == "0.0.0.0:8000"
    assert config.kms.iterations >= 600_000
    assert config.auth.lock_duration == timedelta(minutes=30)


def test_environment_overrides_any_key_and_shortcuts() -> None:
    config = load_config(
        ROOT / "configs",
        environ={
            "APP__AUTH__CAPTCHA_ENABLED": "false",
            "APP__SERVER__GRPC__MAX_MESSAGE_BYTES": "2048",
            "app__kms__rotate_interval": "1h30m",
            "DATABASE_URL": "postgresql://db.example/app",
            "REDIS_URL": "redis://cache.example:6379/1",
        },
    )
    assert config.auth.captcha_enabled is False
    assert config.server.grpc.max_message_bytes == 2048
    assert config.kms.rotate_interval == timedelta(hours=1, minutes=30)
    assert config.data.database.url == "postgresql://db.example/app"
    assert config.data.redis.url == "redis://cache.example:6379/1"


def test_explicit_app_variable_wins_over_shortcut() -> None:
    config = load_config(None, environ={"APP__DATA__DATABASE__URL": "postgresql://a/x", "DATABASE_URL": "postgresql://b/y"})
    assert config.data.database.url == "postgresql://a/x"


@pytest.mark.parametrize(
    ("environ", "key", "problem"),
    [
        ({"APP__SERVER__GRPC__ADDR": "nonsense"}, "server.grpc.addr", "host:port"),
        ({"APP__KMS__ITERATIONS": "5000"}, "kms.iterations", "10000"),
        ({"APP__AUTH__LOCK_DURATION": "soon"}, "auth.lock_duration", "invalid duration"),
        ({"APP__AUTH__MAX_LOGIN_ATTEMPTS": "many"}, "auth.max_login_attempts", "integer"),
        ({"APP__KMS__ALGORITHM": "AES-256-CBC"}, "kms.algorithm", "unauthenticated"),
        ({"APP__AUTH__NO_SUCH_KEY": "1"}, "auth.no_such_key", "unknown key"),
        ({"APP__SECURITY__MODE": "production"}, "kms.seed", "development seed"),
        ({"APP__AUTH__DELETION_GRACE": "12h"}, "auth.deletion_grace", "between 1d and 365d"),
        ({"APP__AUTH__DELETION_GRACE": "366d"}, "auth.deletion_grace", "between 1d and 365d"),
        ({"APP__AUTH__DELETION_GRACE": "forever"}, "auth.deletion_grace", "invalid duration"),
    ],
)
def test_invalid_configuration_names_the_key(environ: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs", environ=environ)
    assert key in str(err.value)
    assert problem in str(err.value)


def test_deletion_grace_defaults_to_30_days_and_reaches_the_account_policy() -> None:
    assert account_policy(load_config(ROOT / "configs", environ={}).auth).deletion_grace == timedelta(days=30)
    config = load_config(ROOT / "configs", environ={"APP__AUTH__DELETION_GRACE": "7d"})
    assert config.auth.deletion_grace == timedelta(days=7)
    assert account_policy(config.auth).deletion_grace == timedelta(days=7)


def test_missing_config_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("30", 30), (12, 12)]
)
def test_go_style_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds
