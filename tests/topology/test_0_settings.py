"""The settings the topology needs, as the configuration accepts and refuses them (docs/operations.md
"Reference topology")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from internal.conf.config import Database, Redis
from internal.data.data import pool_options


def test_transaction_pooler_options() -> None:
    direct = pool_options(Database(url="postgresql://h/db"))
    assert direct == {"server_settings": {"statement_timeout": "10000"}}
    pooled = pool_options(Database(url="postgresql://pgbouncer/db", pooler="transaction", auto_migrate=False))
    assert pooled["statement_cache_size"] == 0
    assert pooled["command_timeout"] == 10.0
    assert "server_settings" not in pooled  # PgBouncer refuses startup parameters it does not know


def test_transaction_pooler_refuses_auto_migrate() -> None:
    with pytest.raises(ValidationError, match="auto_migrate needs a session"):
        Database(url="postgresql://pgbouncer/db", pooler="transaction")


def test_replica_acks_only_with_replicas() -> None:
    assert Redis(url="redis+sentinel://s1:26379,s2:26379/authkms/0", replica_acks=1).replica_acks == 1
    with pytest.raises(ValidationError, match="not Redis Cluster"):
        Redis(url="redis+cluster://node:6379", replica_acks=1)
