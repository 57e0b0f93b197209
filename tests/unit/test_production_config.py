"""Production mode refuses every development or unsafe setting, however it is supplied (docs/security.md item 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from internal.conf.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

# A production configuration with nothing to refuse: real secrets, TLS acknowledged elsewhere.
SAFE = {
    "APP__SECURITY__MODE": "production",
    "APP__KMS__SEED": "a-real-seed-from-the-secret-store",
    "APP__KMS__SALT": "a-real-salt-from-the-secret-store",
    "APP__AUTH__DEV_OUTBOX": "false",
    "APP__SERVER__GRPC__ALLOW_INSECURE_TRANSPORT": "true",
    "APP__SERVER__HTTP__ALLOW_INSECURE_TRANSPORT": "true",
    "APP__SERVER__HTTP__ADDR": "127.0.0.1:8000",
    "APP__DATA__DATABASE__URL": "postgresql://authkms@db.internal/authkms",
    "APP__DATA__REDIS__URL": "redis://cache.internal:6379/0",
}


def refusal(environ: dict[str, str], path: Path | None = ROOT / "configs") -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=environ)
    return str(err.value)


def test_a_safe_production_configuration_loads() -> None:
    config = load_config(ROOT / "configs", environ=SAFE)
    assert config.security.mode == "production"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"APP__KMS__SEED": "development-only-seed-change-me"}, "kms.seed: the development seed is refused"),
        ({"APP__KMS__SALT": "development-only-salt"}, "kms.salt: the development salt is refused"),
        ({"APP__SECURITY__KMS_REQUIRE_CREDENTIALS": "false"}, "security.kms_require_credentials:"),
        ({"APP__AUTH__CAPTCHA_ENABLED": "false"}, "auth.captcha_enabled: captchas cannot be turned off"),
        ({"APP__AUTH__CAPTCHA__ENABLED": "false"}, "auth.captcha.enabled: captchas cannot be turned off"),
        ({"APP__SERVER__GRPC__ALLOW_INSECURE_TRANSPORT": "false"}, "server.grpc.tls: plaintext gRPC is refused"),
        ({"APP__SERVER__HTTP__ALLOW_INSECURE_TRANSPORT": "false"}, "server.http.allow_insecure_transport:"),
        ({"APP__AUTH__SMS_WEBHOOK__URL": "http://sms.example/send"}, "auth.sms_webhook.url: only https://"),
        ({"APP__AUTH__DEV_OUTBOX": "true"}, "auth.dev_outbox: the development outbox is refused"),
        ({"APP__DATA__DATABASE__URL": ""}, "data.database.url: set a PostgreSQL URL; the embedded server"),
        ({"APP__DATA__REDIS__URL": ""}, "data.redis.url: set a Redis URL; the embedded server"),
    ],
)
def test_each_unsafe_setting_is_refused_with_one_line_naming_its_key(change: dict[str, str], message: str) -> None:
    text = refusal({**SAFE, **change})
    problems = text.removeprefix("invalid configuration:\n").splitlines()
    assert len(problems) == 1 and message in problems[0], text


def test_secret_files_are_checked_too(tmp_path: Path) -> None:
    (tmp_path / "seed").write_text("development-only-seed-change-me\n")
    (tmp_path / "salt").write_text("development-only-salt")
    environ = {**SAFE, "APP__KMS__SEED_FILE": str(tmp_path / "seed"), "APP__KMS__SALT_FILE": str(tmp_path / "salt")}
    text = refusal(environ)
    assert "kms.seed_file: the development seed is refused" in text
    assert "kms.salt_file: the development salt is refused" in text
    missing = refusal({**SAFE, "APP__KMS__SEED_FILE": str(tmp_path / "missing")})
    assert "kms.seed_file: cannot read" in missing


def test_every_problem_is_listed_at_once() -> None:
    text = refusal({"APP__SECURITY__MODE": "production"}, None)
    for key in ("kms.seed:", "kms.salt:", "server.grpc.tls:", "server.http.allow_insecure_transport:"):
        assert key in text
    assert "server.http.addr: set an explicit address" in text  # the default listens on every interface


def test_the_shipped_development_file_is_refused_in_production() -> None:
    text = refusal({"APP__SECURITY__MODE": "production"})
    assert "kms.seed:" in text and "auth.dev_outbox:" in text


def test_development_mode_accepts_all_of_it() -> None:
    config = load_config(ROOT / "configs", environ={"APP__AUTH__CAPTCHA_ENABLED": "false"})
    assert config.security.mode == "development" and not config.auth.captcha_enabled


@pytest.mark.parametrize("addr", ["0.0.0.0:²", "host:９０００", "host:-1", "host:70000"])
def test_a_port_must_be_ascii_digits(addr: str) -> None:
    text = refusal({"APP__SERVER__GRPC__ADDR": addr})
    assert "server.grpc.addr: expected host:port" in text


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"APP__AUTH__HARD_LOCK_ATTEMPTS": "3", "APP__AUTH__MAX_LOGIN_ATTEMPTS": "5"}, "hard_lock_attempts"),
        ({"APP__AUTH__LOGIN_DELAY": "10s", "APP__AUTH__LOGIN_DELAY_MAX": "1s"}, "login_delay_max"),
    ],
)
def test_lockout_settings_are_consistent(change: dict[str, str], key: str) -> None:
    assert key in refusal(change)
