"""schemathesis against the live HTTP API, driven by the committed OpenAPI document (api/openapi.yaml).

Every operation gets generated requests (a bounded number each, so the suite stays quick), with a valid
credential where the document asks for one: a user's access token for auth.v1 (an auth.introspect service
credential for IntrospectToken), an admin service credential for kms.v1. No reply may be a 5xx, and every
reply (status, content type, body) must conform to the document.
The server has a database of its own: generated key rotations and maintenance runs touch nobody else's keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.harness import ROOT, ServerProcess, create_credential, running, unique_account
from tests.e2e.http_api import LIMITS, Api
from tests.helpers import admin_sql, with_database

pytestmark = pytest.mark.e2e

DOCUMENT = yaml.safe_load((ROOT / "api" / "openapi.yaml").read_text())
schema = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12


class Live:
    """The server under test and the credentials each operation needs."""

    def __init__(self, process: ServerProcess) -> None:
        self.api = Api(process.http_port)
        self.kms_admin = create_credential(process.env, "schemathesis", "kms.encrypt,kms.decrypt,kms.admin")
        self.introspector = create_credential(process.env, "schemathesis-introspect", "auth.introspect")
        self.account = unique_account("fuzz")
        self.api.ok("POST", "/api/v1/auth/register", self.account)
        self.access_token = self.login()
        self.statuses: dict[str, set[int]] = {}  # operationId -> statuses seen

    def login(self) -> str:
        tokens = self.api.ok("POST", "/api/v1/auth/login", self.account)
        return str(tokens["accessToken"])

    def headers_for(self, case: Any) -> dict[str, str]:
        if not case.operation.definition.raw.get("security"):
            return {}
        if case.path.startswith("/api/v1/kms/"):
            return {"Authorization": f"Bearer {self.kms_admin}"}
        if case.path == "/api/v1/auth/introspect":
            return {"Authorization": f"Bearer {self.introspector}"}
        # Logout revokes the session it is called with: it gets one of its own, so the others stay signed in.
        token = self.login() if case.path == "/api/v1/auth/logout" else self.access_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str, redis_url: str) -> Iterator[Live]:
    name = f"test_fuzz_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}"'))
    tmp_path: Path = tmp_path_factory.mktemp("schemathesis")
    env = {
        "DATABASE_URL": with_database(postgres_server_url, name),
        "REDIS_URL": redis_url,
        "APP__DATA__REDIS__KEY_PREFIX": f"test:{uuid.uuid4().hex[:10]}:",
        "APP__DATA__DATA_DIR": str(tmp_path / "data"),
        "APP__AUTH__CAPTCHA_ENABLED": "false",
        "APP__AUTH__DEV_OUTBOX": "true",
        **LIMITS,
    }
    try:
        with running(tmp_path, env) as (process,):
            yield Live(process)
    finally:
        asyncio.run(admin_sql(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_document_covers_every_operation() -> None:
    operations = [op for item in DOCUMENT["paths"].values() for op in item.values()]
    assert len(operations) >= 26
    assert all("200" in op["responses"] and "default" in op["responses"] for op in operations)
    secured = {op["operationId"] for op in operations if op.get("security")}
    assert {"Auth_Logout", "Auth_GetProfile", "Auth_LockStatus", "KMS_Encrypt", "KMS_PerformMaintenance"} <= secured
    assert "Auth_IntrospectToken" in secured  # a service credential with auth.introspect (docs/security.md)
    assert not {"Auth_Login", "Auth_Register", "Auth_GetJwks"} & secured


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
def test_live_api_conforms_to_its_openapi_document(case: Any, live: Live) -> None:
    response = case.call_and_validate(base_url=live.api.base, headers=live.headers_for(case), checks=CHECKS, timeout=30)
    live.statuses.setdefault(case.operation.definition.raw["operationId"], set()).add(response.status_code)


def test_every_operation_was_exercised_past_authentication(live: Live) -> None:
    """Runs after the generated cases: each operation was called, and each secured one was let in at least once
    (some reply other than 401), so the credentials really reached the use cases."""
    operations = {op["operationId"]: op for item in DOCUMENT["paths"].values() for op in item.values()}
    assert set(live.statuses) == set(operations)
    for operation_id, statuses in live.statuses.items():
        assert not any(status >= 500 for status in statuses), (operation_id, statuses)
        if operations[operation_id].get("security"):
            assert statuses - {401}, (operation_id, statuses)
