"""Access-token signing: key loading/generation and the PyJWT-backed ``TokenSigner`` (docs/security.md item 12).

* EdDSA (Ed25519) by default: other services verify with the public key from GetJwks. HS256 is an
  opt-in compatibility mode with a shared secret of at least 32 bytes.
* Verification allow-lists exactly the configured algorithm and the one ``kid`` we sign with, so
  ``alg: none`` and algorithm confusion (an HS256 token "signed" with the Ed25519 public key) fail.
* Keys come from ``auth.jwt_signing_key`` / ``auth.jwt_signing_key_file``. When both are empty in
  development, a key is generated once under ``data.data_dir`` (mode 0600) and reused, so restarts
  keep issued tokens valid; in production an empty key refuses to start.
* Access tokens are typed (RFC 9068): the header carries ``typ: at+jwt`` and verification requires it,
  so no other JWT signed with the same key (an ID token, a token of another purpose) passes as one.
* A token whose ``exp - iat`` exceeds the configured access-token lifetime never verifies, even with a
  valid signature: a key that leaked briefly cannot mint long-lived tokens.
* ``kid``: the RFC 7638 thumbprint of the public JWK for EdDSA. For HS256 a thumbprint would be a
  plain SHA-256 of the secret (an offline guessing oracle), so the kid is an HMAC of a fixed label
  under the secret instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from internal.biz.errors import Unauthenticated
from internal.biz.token import VerifiedToken
from internal.conf.config import Auth, ConfigError, read_secret

EDDSA = "EdDSA"
HS256 = "HS256"
MIN_HS256_SECRET_BYTES = 32
_ED25519_FILE = "jwt_ed25519.pem"
_HS256_FILE = "jwt_hs256.key"
_REQUIRED_CLAIMS = ["exp", "iat", "nbf", "sub", "jti", "iss", "aud"]
ACCESS_TOKEN_TYPE = "at+jwt"
# RFC 9068 §4: "at+jwt"; the full media type "application/at+jwt" means the same (RFC 7515 §4.1.9).
_ACCEPTED_TYPES = frozenset({ACCESS_TOKEN_TYPE, "application/" + ACCESS_TOKEN_TYPE})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ed25519_thumbprint(public_x: str) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an Ed25519 public key (RFC 8037 OKP members)."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": public_x}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


class JwtSigner:
    """Implements ``internal.biz.token.TokenSigner``."""

    def __init__(
        self,
        algorithm: str,
        key: Ed25519PrivateKey | bytes,
        issuer: str,
        audience: str,
        max_lifetime: timedelta = timedelta(minutes=15),
        leeway: timedelta = timedelta(seconds=30),
    ) -> None:
        self._algorithm = algorithm
        self._max_lifetime = int(max_lifetime.total_seconds())
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._jwk: dict[str, str] | None = None
        if algorithm == EDDSA:
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError("auth.jwt_signing_key: EdDSA needs an Ed25519 private key (PEM)")
            self._signing_key: Any = key
            self._verify_key: Any = key.public_key()
            raw = self._verify_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            x = _b64url(raw)
            self._kid = ed25519_thumbprint(x)
            self._jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self._kid, "alg": EDDSA, "use": "sig"}
        elif algorithm == HS256:
            if not isinstance(key, bytes) or len(key) < MIN_HS256_SECRET_BYTES:
                raise ConfigError(
                    f"auth.jwt_signing_key: HS256 needs a secret of at least {MIN_HS256_SECRET_BYTES} bytes"
                )
            self._signing_key = self._verify_key = key
            self._kid = _b64url(hmac.new(key, b"authkms jwt kid", hashlib.sha256).digest()[:12])
        else:
            raise ConfigError(f"auth.jwt_algorithm: unsupported algorithm {algorithm!r}")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def kid(self) -> str:
        return self._kid

    def sign(self, claims: Mapping[str, Any]) -> str:
        payload = {**claims, "iss": self._issuer, "aud": self._audience}
        headers = {"kid": self._kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(payload, self._signing_key, algorithm=self._algorithm, headers=headers)

    def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
            # Checked before PyJWT for a clear rule: one algorithm, one key; "none" never passes.
            if header.get("alg") != self._algorithm or header.get("kid") != self._kid:
                raise Unauthenticated("TOKEN_INVALID", "token is invalid")
            if str(header.get("typ", "")).lower() not in _ACCEPTED_TYPES:
                raise Unauthenticated("TOKEN_INVALID", "token is invalid")
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("TOKEN_EXPIRED", "token has expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthenticated("TOKEN_INVALID", "token is invalid") from None
        lifetime = claims["exp"] - claims["iat"]
        if not isinstance(lifetime, int) or lifetime > self._max_lifetime:
            raise Unauthenticated("TOKEN_INVALID", "token is invalid")
        return VerifiedToken(claims=claims, kid=self._kid)

    def jwks(self) -> list[dict[str, str]]:
        return [dict(self._jwk)] if self._jwk else []


def _write_once(path: Path, content: bytes) -> bytes:
    """Create ``path`` (0600) atomically unless it exists; returns what the file holds afterwards.

    Several worker processes may start at once: the first link wins, the others read its key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def _load_ed25519(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: not a readable PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source}: EdDSA needs an Ed25519 private key")
    return key


def load_signing_key(auth: Auth, data_dir: str, production: bool) -> Ed25519PrivateKey | bytes:
    """The configured key; in development a persisted generated one when none is configured."""
    try:
        configured = read_secret(auth.jwt_signing_key, auth.jwt_signing_key_file)
    except OSError as exc:
        raise ConfigError(f"auth.jwt_signing_key_file: cannot read {auth.jwt_signing_key_file}") from exc
    source = "auth.jwt_signing_key_file" if auth.jwt_signing_key_file else "auth.jwt_signing_key"
    if configured:
        if auth.jwt_algorithm == EDDSA:
            return _load_ed25519(configured.encode(), source)
        return configured.encode()
    if production:
        raise ConfigError("auth.jwt_signing_key: a signing key is required in production mode")
    if auth.jwt_algorithm == EDDSA:
        path = Path(data_dir) / _ED25519_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_once(path, pem)
        return _load_ed25519(path.read_bytes(), str(path))
    path = Path(data_dir) / _HS256_FILE
    if not path.exists():
        _write_once(path, _b64url(secrets.token_bytes(32)).encode())
    return path.read_bytes().strip()


def build_signer(auth: Auth, data_dir: str, production: bool) -> JwtSigner:
    """The signer the container provides: ``build_signer(conf.auth, conf.data.data_dir, mode == "production")``."""
    key = load_signing_key(auth, data_dir, production)
    return JwtSigner(auth.jwt_algorithm, key, auth.jwt_issuer, auth.jwt_audience, auth.access_token_expiration)
