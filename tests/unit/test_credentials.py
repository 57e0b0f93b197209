"""A credential's cached grant (``CredentialUsecase.granted``): the KMS calls' check that never waits. It grants
only what ``authorize_key`` would, and anything else is left to ``authorize_key``, which answers and audits it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from internal.biz.credentials import CredentialUsecase, ServiceCredential, token_hash
from internal.biz.errors import PermissionDenied
from tests.unit.auth.fakes import FakeAudit

TOKEN = "akms_" + "t" * 43


class OneCredentialRepo:
    """The credentials table holding one active credential for ``TOKEN``, counting lookups."""

    def __init__(self, scopes: Sequence[str], patterns: Sequence[str]) -> None:
        self.credential: ServiceCredential | None = ServiceCredential(
            "1", "orders-svc", frozenset(scopes), datetime.now(UTC), None, tuple(patterns)
        )
        self.lookups = 0

    async def find_active_by_hash(self, digest: str) -> ServiceCredential | None:
        self.lookups += 1
        return self.credential if digest == token_hash(TOKEN) else None

    async def revoke(self, name: str) -> bool:
        self.credential = None
        return True


def usecase(scopes: Sequence[str] = ("kms.encrypt",), patterns: Sequence[str] = ("orders", "payments.*")) -> tuple[
    CredentialUsecase, OneCredentialRepo, FakeAudit
]:
    repo, audit = OneCredentialRepo(scopes, patterns), FakeAudit()
    return CredentialUsecase(repo, audit), repo, audit  # type: ignore[arg-type]


async def test_nothing_is_granted_before_the_credential_was_loaded() -> None:
    credentials, repo, _ = usecase()
    assert credentials.granted(TOKEN, "orders", "kms.encrypt") is None
    assert repo.lookups == 0  # it never waits on the repository
    await credentials.authorize_key(TOKEN, "orders", "kms.encrypt", action="Encrypt")
    granted = credentials.granted(TOKEN, "orders", "kms.encrypt")
    assert granted is not None and granted.name == "orders-svc"
    assert repo.lookups == 1


@pytest.mark.parametrize(
    ("key_name", "scopes", "granted"),
    [
        ("orders", ("kms.encrypt",), True),
        ("payments.eu", ("kms.encrypt",), True),
        ("orders", ("kms.admin", "kms.encrypt"), True),  # one of the scopes is enough
        ("orders", ("kms.decrypt",), False),  # a scope it lacks
        ("orders.eu", ("kms.encrypt",), False),  # an exact pattern grants no children
        ("payments", ("kms.encrypt",), False),  # payments.* grants no key named payments
        ("default", ("kms.encrypt",), False),
        ("authkms.users", ("kms.encrypt",), False),  # reserved
    ],
)
async def test_a_loaded_credential_is_granted_exactly_what_authorize_key_grants(
    key_name: str, scopes: tuple[str, ...], granted: bool
) -> None:
    credentials, _, _ = usecase()
    await credentials.authorize_key(TOKEN, "orders", "kms.encrypt", action="Encrypt")
    assert (credentials.granted(TOKEN, key_name, *scopes) is not None) is granted
    try:
        await credentials.authorize_key(TOKEN, key_name, *scopes, action="Encrypt")
        allowed = True
    except PermissionDenied:
        allowed = False
    assert allowed is granted


async def test_a_refusal_is_left_to_authorize_key_which_audits_it() -> None:
    credentials, _, audit = usecase()
    await credentials.authorize_key(TOKEN, "orders", "kms.encrypt", action="Encrypt")
    assert credentials.granted(TOKEN, "invoices", "kms.encrypt") is None
    assert audit.events == []  # the cached check records nothing itself
    with pytest.raises(PermissionDenied):
        await credentials.authorize_key(TOKEN, "invoices", "kms.encrypt", action="Encrypt")
    assert [(e["event"], e["outcome"]) for e in audit.events] == [("access.denied", "key_not_allowed")]


async def test_an_unknown_token_or_a_revoked_credential_is_not_granted() -> None:
    credentials, _, _ = usecase()
    await credentials.authorize_key(TOKEN, "orders", "kms.encrypt", action="Encrypt")
    assert credentials.granted("akms_" + "u" * 43, "orders", "kms.encrypt") is None
    await credentials.revoke("orders-svc")
    assert credentials.granted(TOKEN, "orders", "kms.encrypt") is None


async def test_an_expired_cache_entry_is_not_granted(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials, _, _ = usecase()
    await credentials.authorize_key(TOKEN, "orders", "kms.encrypt", action="Encrypt")
    later = time.monotonic() + 6.0  # the cache keeps entries 5 s
    monkeypatch.setattr("internal.biz.credentials.time.monotonic", lambda: later)
    assert credentials.granted(TOKEN, "orders", "kms.encrypt") is None
