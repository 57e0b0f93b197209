"""Signing-key loading: configured PEM/secret, persisted development key, production refusal."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from internal.conf.config import Auth, ConfigError
from internal.data.signing_keys import build_signer, load_signing_key


def test_development_generates_and_reuses_a_private_key(tmp_path: Path) -> None:
    first = build_signer(Auth(), str(tmp_path / "data"), production=False)
    key_file = tmp_path / "data" / "jwt_ed25519.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = build_signer(Auth(), str(tmp_path / "data"), production=False)
    assert first.kid == second.kid
    now = int(time.time())
    token = first.sign({"sub": "1", "sid": "s", "jti": "j", "iat": now, "nbf": now, "exp": now + 60})
    assert second.verify(token).claims["sub"] == "1"
    assert list((tmp_path / "data").iterdir()) == [key_file]  # no temp files left behind


def test_production_refuses_an_empty_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt_signing_key"):
        load_signing_key(Auth(), str(tmp_path), production=True)
    with pytest.raises(ConfigError):
        load_signing_key(Auth(jwt_algorithm="HS256"), str(tmp_path), production=True)
    assert not list(tmp_path.iterdir())


def test_configured_pem_inline_and_from_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    (tmp_path / "key.pem").write_text(pem)
    inline = build_signer(Auth(jwt_signing_key=pem), str(tmp_path / "unused"), production=True)
    from_file = build_signer(Auth(jwt_signing_key_file=str(tmp_path / "key.pem")), "", production=True)
    assert inline.kid == from_file.kid
    assert not (tmp_path / "unused").exists()


def test_bad_configured_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PEM"):
        build_signer(Auth(jwt_signing_key="not a pem"), str(tmp_path), production=True)
    with pytest.raises(ConfigError, match="32 bytes"):
        build_signer(Auth(jwt_algorithm="HS256", jwt_signing_key="short"), str(tmp_path), production=True)
    with pytest.raises(ConfigError, match="jwt_signing_key_file"):
        build_signer(Auth(jwt_signing_key_file=str(tmp_path / "missing.pem")), str(tmp_path), production=True)


def test_hs256_development_secret_is_generated_and_kid_does_not_expose_it(tmp_path: Path) -> None:
    signer = build_signer(Auth(jwt_algorithm="HS256"), str(tmp_path), production=False)
    secret = (tmp_path / "jwt_hs256.key").read_bytes()
    assert len(secret) >= 32 and stat.S_IMODE((tmp_path / "jwt_hs256.key").stat().st_mode) == 0o600
    assert signer.jwks() == [] and signer.kid == build_signer(Auth(jwt_algorithm="HS256"), str(tmp_path), False).kid
