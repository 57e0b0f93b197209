"""The composition root (Kratos' wire.go): builds every object once, at start-up, never at import.

One dependency-injector container per layer, joined in ``Container``: the declarations say what depends
on what. ``build(config)`` is the one way in, for the server and every CLI command alike: it opens the
resources (the asyncpg pool, the Redis client, the initialized KMS), resolves what a process uses into
``Wired``, and closes the resources when its block ends.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from dependency_injector import containers, providers
from grpc_health.v1 import health

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz.account import AccountPolicy, AccountUsecase
from internal.biz.audit import DenialAuditLimit
from internal.biz.auth import AuthPolicy, AuthUsecase
from internal.biz.captcha import CaptchaSettings, CaptchaUsecase, CodeSenders
from internal.biz.credentials import CredentialUsecase
from internal.biz.kms import KeyDefaults, KeyEvents, KeyRepo, NoKeyEvents
from internal.biz.kms_admin import KeyAdmin
from internal.biz.kms_cipher import KmsCipher, UsersPiiCipher
from internal.biz.kms_datakey import DataKeyUsecase
from internal.biz.kms_keyring import KeyRing, RootKeySource
from internal.biz.lockout import Lockout, LockoutPolicy
from internal.biz.password import Argon2PasswordHasher
from internal.biz.ports import AuditLog
from internal.biz.token import TokenPolicy, TokenUsecase
from internal.biz.totp import TotpUsecase
from internal.biz.user import UserUsecase
from internal.conf.config import Bootstrap, Kms, read_secret
from internal.data.account import PgAccountRepo
from internal.data.audit import PgAuditLog
from internal.data.audit_suppressed import RedisSuppressedDenials
from internal.data.captcha import ImageCaptchaRenderer, RedisCaptchaStore
from internal.data.credentials import PgCredentialRepo
from internal.data.data import pg_pool_resource, redis_resource
from internal.data.kms import PgKeyRepo
from internal.data.kms_events import RedisKeyEvents, channel_name
from internal.data.kms_file import FileKeyRepo
from internal.data.login_guard import RedisLoginGuard
from internal.data.ratelimit import RedisRateLimiter
from internal.data.reset_codes import RedisResetCodeStore
from internal.data.senders import build_senders
from internal.data.session import PgSessionRepo
from internal.data.signing_keys import build_signer
from internal.data.user import PgUserRepo
from internal.data.users_pii import PgUsersPiiStore
from internal.server.grpc import ServiceRegistration
from internal.server.health import DependencyHealth
from internal.server.peer import TrustedProxies
from internal.service.auth import AuthService
from internal.service.kms import KMSService

AUTH_SERVICE = "auth.v1.Auth"
KMS_SERVICE = "kms.v1.KMS"


def key_repo(conf: Kms, pool: asyncpg.Pool) -> KeyRepo:
    """``kms.storage_type``: the ``kms_keys``/``kms_data_keys`` tables, or one JSON file."""
    return PgKeyRepo(pool) if conf.storage_type == "database" else FileKeyRepo(conf.storage_path)


def key_events(redis: Any, key_prefix: str) -> KeyEvents:
    return RedisKeyEvents(redis, channel_name(key_prefix)) if redis is not None else NoKeyEvents()


async def key_ring_resource(conf: Kms, repo: KeyRepo, events: KeyEvents, audit: Any) -> AsyncIterator[KeyRing]:
    """Derive the root key, prove it opens every stored key (or refuse to start), then serve."""
    ring = KeyRing(
        repo,
        RootKeySource(
            read_secret(conf.seed, conf.seed_file),
            read_secret(conf.salt, conf.salt_file),
            conf.iterations,
            conf.key_length,
            previous_seed=read_secret(conf.previous_seed, conf.previous_seed_file),
            previous_salt=read_secret(conf.previous_salt, conf.previous_salt_file),
        ),
        KeyDefaults(conf.algorithm, conf.rotate_interval, conf.rotate_after_encryptions),
        events=events,
        audit=audit,
        recheck=conf.cache_recheck_interval,
    )
    await ring.open()
    try:
        yield ring
    finally:
        await ring.close()


def dependency_probes(pool: asyncpg.Pool, redis: Any) -> dict[str, Any]:
    return {"postgres": lambda: pool.fetchval("SELECT 1"), "redis": redis.ping}


def captcha_code_key(ring: KeyRing) -> bytes:
    return ring.derive_secret(b"captcha-code-key/v1")


def account_policy(auth: Any) -> AccountPolicy:
    return AccountPolicy(
        password_max_length=auth.password_max_length,
        codes=CaptchaSettings.from_conf(auth),
        deletion_grace=auth.deletion_grace,
    )


class Data(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Bootstrap)

    pg_pool = providers.Resource(pg_pool_resource, conf=config.provided.data.database)
    redis = providers.Resource(redis_resource, conf=config.provided.data.redis)
    key_prefix = config.provided.data.redis.key_prefix
    keys = providers.Singleton(key_repo, conf=config.provided.kms, pool=pg_pool)
    key_events = providers.Singleton(key_events, redis=redis, key_prefix=key_prefix)
    users_pii = providers.Singleton(PgUsersPiiStore, pool=pg_pool)

    audit = providers.Singleton(PgAuditLog, pool=pg_pool)
    suppressed_denials = providers.Singleton(RedisSuppressedDenials, redis=redis, key_prefix=key_prefix)
    users = providers.Singleton(PgUserRepo, pool=pg_pool)
    sessions = providers.Singleton(
        PgSessionRepo,
        pool=pg_pool,
        redis=redis,
        key_prefix=key_prefix,
        revoked_cache_ttl=config.provided.auth.access_token_expiration,
    )
    login_guard = providers.Singleton(RedisLoginGuard, redis=redis, key_prefix=key_prefix)
    rate_limiter = providers.Singleton(RedisRateLimiter, redis=redis, key_prefix=key_prefix)
    captcha_store = providers.Singleton(RedisCaptchaStore, redis=redis, key_prefix=key_prefix)
    senders = providers.Singleton(build_senders, config=config, redis=redis, key_prefix=key_prefix)
    credentials = providers.Singleton(PgCredentialRepo, pool=pg_pool)
    accounts = providers.Singleton(PgAccountRepo, pool=pg_pool)
    reset_codes = providers.Singleton(RedisResetCodeStore, redis=redis, key_prefix=key_prefix)
    signer = providers.Singleton(
        build_signer,
        auth=config.provided.auth,
        data_dir=config.provided.data.data_dir,
        production=providers.Callable(lambda c: c.security.mode == "production", config),
    )


class Biz(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Bootstrap)
    data = providers.DependenciesContainer()

    key_ring = providers.Resource(
        key_ring_resource, conf=config.provided.kms, repo=data.keys, events=data.key_events, audit=data.audit
    )
    kms_cipher = providers.Singleton(
        KmsCipher,
        key_ring,
        max_plaintext_bytes=config.provided.kms.max_plaintext_bytes,
        max_batch_items=config.provided.kms.max_batch_items,
    )
    cipher = providers.Singleton(UsersPiiCipher, kms_cipher)
    data_keys = providers.Singleton(DataKeyUsecase, kms_cipher, key_ring)
    key_admin = providers.Singleton(
        KeyAdmin, key_ring, cipher, data.users_pii, config.provided.kms.maintenance_batch_size
    )
    hasher = providers.Singleton(Argon2PasswordHasher.from_conf, config.provided.auth)
    lockout = providers.Singleton(
        Lockout, data.login_guard, providers.Callable(LockoutPolicy.from_conf, config.provided.auth)
    )
    captcha = providers.Singleton(
        CaptchaUsecase,
        settings=providers.Callable(CaptchaSettings.from_conf, config.provided.auth),
        store=data.captcha_store,
        renderer=providers.Singleton(ImageCaptchaRenderer),
        senders=data.senders,
        limiter=data.rate_limiter,
        code_key=providers.Callable(captcha_code_key, key_ring),
    )
    tokens = providers.Singleton(
        TokenUsecase,
        data.signer,
        data.sessions,
        data.users,
        data.audit,
        providers.Callable(TokenPolicy.from_conf, config.provided.auth),
    )
    auth = providers.Singleton(
        AuthUsecase,
        data.users,
        cipher,
        hasher,
        captcha,
        data.rate_limiter,
        lockout,
        tokens,
        data.audit,
        providers.Callable(AuthPolicy.from_conf, config.provided.auth),
    )
    totp = providers.Singleton(
        TotpUsecase, data.users, cipher, hasher, lockout, tokens, data.audit, config.provided.auth.totp_issuer
    )
    users = providers.Singleton(UserUsecase, data.users, cipher)
    accounts = providers.Singleton(
        AccountUsecase,
        users=data.users,
        accounts=data.accounts,
        sessions=data.sessions,
        resets=data.reset_codes,
        cipher=cipher,
        hasher=hasher,
        lockout=lockout,
        captcha=captcha,
        senders=data.senders,
        limiter=data.rate_limiter,
        audit=data.audit,
        policy=providers.Callable(account_policy, config.provided.auth),
        code_key=providers.Callable(captcha_code_key, key_ring),
    )
    # Refused anonymous calls write a bounded number of audit rows per client network.
    denial_audit = providers.Singleton(DenialAuditLimit, data.audit, data.rate_limiter, data.suppressed_denials)
    credentials = providers.Singleton(CredentialUsecase, data.credentials, denial_audit)


def _auth_registration(service: AuthService) -> ServiceRegistration:
    return ServiceRegistration(
        AUTH_SERVICE,
        lambda server: auth_pb2_grpc.add_AuthServicer_to_server(service, server),
        auth_pb2.DESCRIPTOR.services_by_name["Auth"],
        service,
    )


def _kms_registration(service: KMSService) -> ServiceRegistration:
    return ServiceRegistration(
        KMS_SERVICE,
        lambda server: kms_pb2_grpc.add_KMSServicer_to_server(service, server),
        kms_pb2.DESCRIPTOR.services_by_name["KMS"],
        service,
    )


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Bootstrap)

    data = providers.Container(Data, config=config)
    biz = providers.Container(Biz, config=config, data=data)

    auth_service = providers.Singleton(
        AuthService, biz.auth, biz.tokens, biz.totp, biz.users, biz.captcha, biz.credentials, biz.accounts
    )
    kms_service = providers.Singleton(
        KMSService,
        biz.kms_cipher,
        biz.key_admin,
        biz.credentials,
        config.provided.security.kms_require_credentials,
        data_keys=biz.data_keys,
    )
    # The gRPC services to serve, as internal.server.grpc.ServiceRegistration values.
    services = providers.List(
        providers.Callable(_auth_registration, auth_service),
        providers.Callable(_kms_registration, kms_service),
    )

    trusted_proxies = providers.Singleton(TrustedProxies, config.provided.server.trusted_proxies)
    health_servicer = providers.Singleton(health.aio.HealthServicer)
    dependency_health = providers.Singleton(
        DependencyHealth,
        servicer=health_servicer,
        service_names=[AUTH_SERVICE, KMS_SERVICE],
        probes=providers.Callable(dependency_probes, pool=data.pg_pool, redis=data.redis),
    )


@dataclass(frozen=True)
class Wired:
    """Everything a process takes from the composition root, resolved (no providers, no awaitables)."""

    config: Bootstrap
    services: list[ServiceRegistration]
    health_servicer: health.aio.HealthServicer
    dependency_health: DependencyHealth
    trusted_proxies: TrustedProxies
    auth: AuthUsecase
    tokens: TokenUsecase
    users: UserUsecase
    accounts: AccountUsecase
    key_admin: KeyAdmin
    credentials: CredentialUsecase
    senders: CodeSenders
    users_cipher: UsersPiiCipher  # `migrate adopt` seals adopted rows with it
    audit: AuditLog
    key_ring: KeyRing


async def _ready(value: Any) -> Any:
    # dependency-injector hands out an awaitable for any provider that depends on an async resource
    # and a plain value otherwise; build() is the only place that needs to know.
    return await value if inspect.isawaitable(value) else value


@contextlib.asynccontextmanager
async def build(config: Bootstrap) -> AsyncIterator[Wired]:
    """Open the resources, yield the resolved objects, close the resources.

    A small function around a plainly used container rather than a container API at every call site:
    callers get typed values, and the one place that awaits providers is here (as wire.go's
    ``wireApp`` returns the assembled app and its cleanup).
    """
    container = Container(config=config)
    # The connections first, one at a time: an unreachable database then fails here alone, instead of
    # inside init_resources' gather of every resource (which logs its cancelled siblings as errors).
    try:
        await _ready(container.data.pg_pool())
        await _ready(container.data.redis())
        await _ready(container.init_resources())
        yield Wired(
            config=config,
            services=await _ready(container.services()),
            health_servicer=container.health_servicer(),
            dependency_health=await _ready(container.dependency_health()),
            trusted_proxies=container.trusted_proxies(),
            auth=await _ready(container.biz.auth()),
            tokens=await _ready(container.biz.tokens()),
            users=await _ready(container.biz.users()),
            accounts=await _ready(container.biz.accounts()),
            key_admin=await _ready(container.biz.key_admin()),
            credentials=await _ready(container.biz.credentials()),
            senders=await _ready(container.data.senders()),
            users_cipher=await _ready(container.biz.cipher()),
            audit=await _ready(container.data.audit()),
            key_ring=await _ready(container.biz.key_ring()),
        )
    finally:
        await _ready(container.shutdown_resources())
