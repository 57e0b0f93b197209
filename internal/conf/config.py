"""Typed configuration, shaped like a Kratos ``conf.proto`` Bootstrap.

Loaded from ``configs/config.yaml`` (or every ``*.yaml`` in a folder), then overridden from the
environment: ``APP__SECTION__KEY=value`` (double underscore between levels, case-insensitive), plus
``DATABASE_URL`` and ``REDIS_URL`` as shortcuts. Validation errors name the key and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from internal.conf.duration import Duration

ENV_PREFIX = "APP__"
DEVELOPMENT_SEED = "development-only-seed-change-me"
DEVELOPMENT_SALT = "development-only-salt"
_PORT = re.compile(r"[0-9]{1,5}")  # not str.isdigit(): it accepts "²", which int() refuses


class ConfigError(Exception):
    """Configuration is unusable; the message names every bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _comma_list(value: Any) -> Any:
    """Lists set from the environment arrive as one string: ``a,b`` (spaces ignored; empty: no items)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class TLS(_Section):
    cert_file: str = ""
    key_file: str = ""
    # When set, clients must present a certificate signed by this CA (mutual TLS).
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @model_validator(mode="after")
    def _pair(self) -> TLS:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must be set together")
        return self


class GRPC(_Section):
    addr: str = "0.0.0.0:9000"
    timeout: Duration = timedelta(seconds=10)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    grace_period: Duration = timedelta(seconds=10)
    workers: int = Field(default=1, ge=1, le=64)
    tls: TLS = TLS()
    # Production mode refuses plaintext gRPC unless this acknowledges it (e.g. TLS ends at a sidecar).
    allow_insecure_transport: bool = False

    @field_validator("addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, e.g. 0.0.0.0:9000")
        return value


class Cors(_Section):
    # Origins a browser may call the HTTP API from, e.g. https://app.example.com; "*" allows any (then without
    # credentials). Empty: CORS is off and browsers refuse cross-origin calls.
    allowed_origins: list[str] = []
    # Request headers a cross-origin call may send.
    allowed_headers: list[str] = ["Authorization", "Content-Type", "Accept", "X-Request-Id"]
    # Let browsers send cookies/HTTP auth with cross-origin calls (never together with "*").
    allow_credentials: bool = False
    # How long a browser may cache a preflight answer.
    max_age: Duration = timedelta(minutes=10)

    _lists = field_validator("allowed_origins", "allowed_headers", mode="before")(_comma_list)

    @model_validator(mode="after")
    def _wildcard(self) -> Cors:
        if "*" in self.allowed_origins and self.allow_credentials:
            raise ValueError("allow_credentials cannot be combined with the \"*\" origin")
        return self


class HTTP(_Section):
    addr: str = "0.0.0.0:8000"
    enabled: bool = True
    # The HTTP port speaks plaintext; production mode refuses it unless this acknowledges it.
    allow_insecure_transport: bool = False
    # Separate host:port for /metrics, /healthz and /readyz; empty: they are served on addr beside the API.
    monitoring_addr: str = ""
    # Largest request body, in bytes (larger: 413).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Longest request line and longest single header, in bytes (longer: 414 / 431).
    max_header_bytes: int = Field(default=8190, ge=256, le=65536)
    # Most header fields in one request (more: 431).
    max_headers: int = Field(default=64, ge=8, le=1024)
    # Time a client has to send a complete request head after connecting (else 408), against slowloris.
    header_timeout: Duration = timedelta(seconds=10)
    # Time a client has to send the whole request body once its head arrived (else 408).
    body_timeout: Duration = timedelta(seconds=30)
    # How long an idle keep-alive connection stays open.
    idle_timeout: Duration = timedelta(seconds=75)
    # Cache-Control max-age of /.well-known/jwks.json: verifiers see a new signing key at most this late.
    jwks_max_age: Duration = timedelta(minutes=5)
    cors: Cors = Cors()

    _addr = field_validator("addr")(GRPC._addr.__func__)  # type: ignore[attr-defined]

    @field_validator("monitoring_addr")
    @classmethod
    def _monitoring_addr(cls, value: str) -> str:
        return GRPC._addr(value) if value else value


class Server(_Section):
    grpc: GRPC = GRPC()
    http: HTTP = HTTP()
    # Networks (CIDR) of the reverse proxies and load balancers in front of the service. Only a peer inside one
    # of them may name the client in X-Forwarded-For / Forwarded (HTTP headers or gRPC metadata); otherwise the
    # socket peer is the client for rate limits, throttles and audit. Empty: no proxy is trusted.
    trusted_proxies: list[str] = []
    # The event loop the server (each worker) runs on: "uvloop" needs the optional extra (pip install
    # 'authkms[uvloop]'); docs/operations.md "Event loop" has the measured difference.
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"

    _list = field_validator("trusted_proxies", mode="before")(_comma_list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network, e.g. 10.0.0.0/8 or 2001:db8::/32") from None
        return value


class Database(_Section):
    # Empty: start the embedded PostgreSQL under data_dir (development default).
    url: str = ""
    min_pool_size: int = Field(default=2, ge=1)
    max_pool_size: int = Field(default=20, ge=1)
    connect_timeout: Duration = timedelta(seconds=5)
    statement_timeout: Duration = timedelta(seconds=10)
    auto_migrate: bool = True
    # "transaction" behind PgBouncer (or any pooler) in transaction pooling mode: no prepared-statement
    # cache, no session settings (statement_timeout is then enforced by the client, which cancels the
    # statement), no reset query when a connection returns to the pool. Migrations hold a session lock:
    # run `migrate up` against PostgreSQL itself and set auto_migrate false.
    pooler: Literal["none", "transaction"] = "none"

    @model_validator(mode="after")
    def _pool(self) -> Database:
        if self.min_pool_size > self.max_pool_size:
            raise ValueError("min_pool_size must not exceed max_pool_size")
        if self.pooler == "transaction" and self.auto_migrate:
            raise ValueError(
                "auto_migrate needs a session of its own: with pooler transaction set auto_migrate false "
                "and run `migrate up` against PostgreSQL directly"
            )
        return self


class Redis(_Section):
    # Empty: start the embedded Redis under data_dir. Accepts redis://, rediss://, unix://,
    # redis+sentinel://host:port,host:port/service_name and redis+cluster://host:port.
    url: str = ""
    key_prefix: str = ""
    socket_timeout: Duration = timedelta(seconds=2)
    # With replicas (Sentinel): a captcha consumed, a login attempt counted or a revocation cached is
    # acknowledged only once this many replicas have it (WAIT), so a failover cannot undo it. 0: no wait.
    replica_acks: int = Field(default=0, ge=0, le=5)

    @model_validator(mode="after")
    def _acks(self) -> Redis:
        if self.replica_acks and self.url.startswith("redis+cluster://"):
            raise ValueError("replica_acks is for a master with replicas (Sentinel), not Redis Cluster")
        return self


class Data(_Section):
    database: Database = Database()
    redis: Redis = Redis()
    # Where the embedded PostgreSQL/Redis keep their files (project-local by default).
    data_dir: str = ".data"


class Captcha(_Section):
    enabled: bool = True
    expiration: Duration = timedelta(minutes=5)
    length: int = Field(default=6, ge=4, le=10)
    max_attempts: int = Field(default=5, ge=1, le=20)
    # Sends per target and per client network (IPv4 /24, IPv6 /64) within send_window.
    send_limit_per_target: int = Field(default=5, ge=1)
    send_limit_per_client: int = Field(default=20, ge=1)
    send_window: Duration = timedelta(hours=1)


class Argon2(_Section):
    # OWASP minimum is 19 MiB / 2 iterations / 1 lane.
    memory_kib: int = Field(default=19456, ge=19456)
    iterations: int = Field(default=2, ge=2)
    lanes: int = Field(default=1, ge=1)


class Smtp(_Section):
    host: str = ""
    port: int = 587
    username: str = ""
    password: str = ""
    from_addr: str = "no-reply@localhost"
    starttls: bool = True
    timeout: Duration = timedelta(seconds=10)


class SmsWebhook(_Section):
    url: str = ""
    bearer_token: str = ""
    timeout: Duration = timedelta(seconds=10)


class Auth(_Section):
    captcha_enabled: bool = True
    captcha: Captcha = Captcha()
    # Failures per (identifier, client network) before each further attempt from there must wait a
    # delay that doubles per failure, from login_delay up to login_delay_max (docs/security.md).
    max_login_attempts: int = Field(default=5, ge=1)
    login_delay: Duration = timedelta(seconds=1)
    login_delay_max: Duration = timedelta(minutes=15)
    # Failures of one account (every identifier, every network) that lock it for lock_duration.
    hard_lock_attempts: int = Field(default=100, ge=1)
    # Counting window of the failure counters, and how long a hard lock lasts.
    lock_duration: Duration = timedelta(minutes=30)
    # Login attempts per client network (IPv4 /24, IPv6 /64) within login_rate_window.
    login_rate_limit: int = Field(default=30, ge=1)
    login_rate_window: Duration = timedelta(minutes=1)
    password_max_length: int = Field(default=128, ge=32, le=1024)
    argon2: Argon2 = Argon2()
    # Accept the Go service's bcrypt hashes ($2a$/$2b$, rehashed to Argon2id at the next login); every
    # password check then does one Argon2id and one bcrypt verification, so timing tells no account apart.
    legacy_bcrypt: bool = False
    jwt_algorithm: Literal["EdDSA", "HS256"] = "EdDSA"
    # EdDSA: PEM private key (file or inline). HS256: shared secret. Empty in development: a key is
    # generated under data.data_dir and reused across restarts.
    jwt_signing_key: str = ""
    jwt_signing_key_file: str = ""
    jwt_issuer: str = "authkms"
    jwt_audience: str = "authkms-clients"
    access_token_expiration: Duration = timedelta(minutes=15)
    refresh_token_expiration: Duration = timedelta(days=7)
    # Absolute lifetime of a refresh-token family, however often it is rotated.
    refresh_token_absolute_lifetime: Duration = timedelta(days=30)
    # How often each replica deletes sessions and revocations that expired over an hour ago (0: never).
    session_purge_interval: Duration = timedelta(hours=1)
    # How long a deleted account's row (no PII, only keyed indexes) keeps its username, email and phone from
    # being registered again before the purge removes it; 1d to 365d (docs/api.md "DeleteAccount").
    deletion_grace: Duration = timedelta(days=30)
    totp_issuer: str = "authkms"
    smtp: Smtp = Smtp()
    sms_webhook: SmsWebhook = SmsWebhook()
    # Development outbox for captcha codes (refused in production mode).
    dev_outbox: bool = False

    @model_validator(mode="after")
    def _lockout(self) -> Auth:
        if self.hard_lock_attempts < self.max_login_attempts:
            raise ValueError("hard_lock_attempts must be at least max_login_attempts (and is meant to be far higher)")
        if self.login_delay_max < self.login_delay:
            raise ValueError("login_delay_max must be at least login_delay")
        return self

    @field_validator("deletion_grace")
    @classmethod
    def _deletion_grace(cls, value: timedelta) -> timedelta:
        # Shorter lets a freed username or address be taken over while its owner may still act on the
        # deletion; longer keeps the keyed indexes past any erasure period worth promising.
        if not timedelta(days=1) <= value <= timedelta(days=365):
            raise ValueError("must be between 1d and 365d")
        return value


class Kms(_Section):
    seed: str = DEVELOPMENT_SEED
    seed_file: str = ""
    salt: str = DEVELOPMENT_SALT
    salt_file: str = ""
    # Root-key rotation only: the seed and salt being replaced; they unwrap, never wrap (see operations).
    previous_seed: str = ""
    previous_seed_file: str = ""
    previous_salt: str = ""
    previous_salt_file: str = ""
    iterations: int = Field(default=600_000, ge=10_000)
    key_length: Literal[16, 24, 32] = 32
    algorithm: Literal["AES-256-GCM", "ChaCha20-Poly1305", "SM4-GCM", "AES-256-CBC"] = "AES-256-GCM"
    rotate_interval: Duration = timedelta(days=30)
    # Default for keys without their own policy: rotate after this many encryptions under one version (well
    # below AES-GCM's ~2^32 random-nonce limit).
    rotate_after_encryptions: int = Field(default=1 << 30, ge=1)
    storage_type: Literal["database", "file"] = "database"
    storage_path: str = ".data/kms_keys.json"
    # Upper bound for a replica to notice a rotation made elsewhere when pub/sub is lost.
    cache_recheck_interval: Duration = timedelta(seconds=5)
    max_plaintext_bytes: int = Field(default=64 * 1024, ge=1, le=16 * 1024 * 1024)
    max_batch_items: int = Field(default=1000, ge=1, le=100_000)
    maintenance_batch_size: int = Field(default=500, ge=1)

    @field_validator("algorithm")
    @classmethod
    def _authenticated_only(cls, value: str) -> str:
        if value == "AES-256-CBC":
            raise ValueError("AES-256-CBC is unauthenticated and refused for new keys; use AES-256-GCM")
        return value

    @model_validator(mode="after")
    def _previous_root_key_complete(self) -> Kms:
        has_seed = bool(self.previous_seed or self.previous_seed_file)
        has_salt = bool(self.previous_salt or self.previous_salt_file)
        if has_seed != has_salt:
            raise ValueError("kms.previous_seed and kms.previous_salt: set both (a root-key rotation) or neither")
        return self


class Security(_Section):
    mode: Literal["development", "production"] = "development"
    # Require the KMS service credentials (Bearer token with scopes) on kms.v1 calls.
    kms_require_credentials: bool = True


class Monitoring(_Section):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    otlp_endpoint: str = ""
    service_name: str = "authkms"


class Bootstrap(_Section):
    server: Server = Server()
    data: Data = Data()
    auth: Auth = Auth()
    kms: Kms = Kms()
    security: Security = Security()
    monitoring: Monitoring = Monitoring()

    @model_validator(mode="after")
    def _production_rules(self) -> Bootstrap:
        if self.security.mode != "production":
            return self
        problems = production_problems(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


def _secret_value(inline: str, file: str, key: str) -> str:
    try:
        return read_secret(inline, file)
    except OSError as exc:
        raise ValueError(f"{key}_file: cannot read {file}: {exc.strerror}") from None


def production_problems(config: Bootstrap) -> list[str]:
    """Every development or unsafe setting, one line each naming its key (docs/security.md item 25).

    Values are checked after every source has been applied (YAML, ``APP__…`` environment, ``*_file``
    contents), so the dev seed is refused however it arrives.
    """
    problems = []
    kms, auth, server = config.kms, config.auth, config.server
    if _secret_value(kms.seed, kms.seed_file, "kms.seed") == DEVELOPMENT_SEED:
        key = "kms.seed_file" if kms.seed_file else "kms.seed"
        problems.append(f"{key}: the development seed is refused in production mode")
    if _secret_value(kms.salt, kms.salt_file, "kms.salt") == DEVELOPMENT_SALT:
        key = "kms.salt_file" if kms.salt_file else "kms.salt"
        problems.append(f"{key}: the development salt is refused in production mode")
    if not config.security.kms_require_credentials:
        problems.append(
            "security.kms_require_credentials: KMS calls without credentials are refused in production mode"
        )
    if not auth.captcha_enabled:
        problems.append("auth.captcha_enabled: captchas cannot be turned off in production mode")
    if not auth.captcha.enabled:
        problems.append("auth.captcha.enabled: captchas cannot be turned off in production mode")
    if not server.grpc.tls.enabled and not server.grpc.allow_insecure_transport:
        problems.append(
            "server.grpc.tls: plaintext gRPC is refused in production mode; configure TLS "
            "or set server.grpc.allow_insecure_transport: true"
        )
    if server.http.enabled and not server.http.allow_insecure_transport:
        problems.append(
            "server.http.allow_insecure_transport: the HTTP port is plaintext; set it to true to acknowledge "
            "that in production mode, or turn server.http.enabled off"
        )
    if server.http.enabled and "addr" not in server.http.model_fields_set:
        problems.append("server.http.addr: set an explicit address for the HTTP port in production mode")
    webhook = auth.sms_webhook.url
    if webhook and not webhook.lower().startswith("https://"):
        problems.append("auth.sms_webhook.url: only https:// webhooks are allowed in production mode")
    if auth.dev_outbox:
        problems.append("auth.dev_outbox: the development outbox is refused in production mode")
    # Empty URLs start the embedded servers, a development convenience with no persistence guarantees.
    if not config.data.database.url:
        problems.append("data.database.url: set a PostgreSQL URL; the embedded server is for development only")
    if not config.data.redis.url:
        problems.append("data.redis.url: set a Redis URL; the embedded server is for development only")
    return problems


def _read_yaml(path: Path) -> dict[str, Any]:
    files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
    merged: dict[str, Any] = {}
    for file in files:
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping")
        _deep_merge(merged, loaded)
    return merged


def _deep_merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: empty section in environment variable name")
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another environment override")
        node[path[-1]] = value
    shortcuts = {"DATABASE_URL": ("data", "database", "url"), "REDIS_URL": ("data", "redis", "url")}
    for name, (section, sub, key) in shortcuts.items():
        if environ.get(name):
            overrides.setdefault(section, {}).setdefault(sub, {}).setdefault(key, environ[name])
    return overrides


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Bootstrap:
    """Read YAML (file or folder), apply environment overrides, validate. Raises ConfigError."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"configuration path {p} does not exist")
        raw = _read_yaml(p)
    _deep_merge(raw, _env_overrides(os.environ if environ is None else environ))
    try:
        return Bootstrap.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def read_secret(inline: str, file: str) -> str:
    """A secret from its file (preferred, e.g. a mounted Kubernetes secret) or the inline value."""
    if file:
        return Path(file).read_text().strip()
    return inline
