"""The composition root (Kratos' wire.go): builds every object once, at start-up, never at import.

Resources (the asyncpg pool and the Redis client) open in ``init_resources`` and close in
``shutdown_resources``. Providers that depend on them resolve to awaitables; ``internal.app`` awaits them.
"""

from __future__ import annotations

from typing import Any

from dependency_injector import containers, providers
from grpc_health.v1 import health

from internal.conf.config import Bootstrap
from internal.data.data import pg_pool_resource, redis_resource
from internal.server.health import DependencyHealth

AUTH_SERVICE = "auth.v1.Auth"
KMS_SERVICE = "kms.v1.KMS"


def dependency_probes(pool: Any, redis: Any) -> dict[str, Any]:
    return {"postgres": lambda: pool.fetchval("SELECT 1"), "redis": redis.ping}


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=Bootstrap)

    pg_pool = providers.Resource(pg_pool_resource, conf=config.provided.data.database)
    redis = providers.Resource(redis_resource, conf=config.provided.data.redis)

    health_servicer = providers.Singleton(health.aio.HealthServicer)
    dependency_health = providers.Singleton(
        DependencyHealth,
        servicer=health_servicer,
        service_names=[AUTH_SERVICE, KMS_SERVICE],
        probes=providers.Callable(dependency_probes, pool=pg_pool, redis=redis),
    )

    # The gRPC services to serve, as internal.server.grpc.ServiceRegistration values.
    services = providers.List()
