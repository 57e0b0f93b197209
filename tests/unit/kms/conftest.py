"""In-memory KMS for unit tests: the real key ring, cipher and admin over MemoryKeyRepo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from internal.biz.kms import KeyRepo
from internal.data.kms_file import MemoryKeyRepo
from tests.unit.kms.stack import KmsStack, build_kms, kms_config

SEED = "unit-test-seed-0123456789"
SALT = "unit-salt"

MakeKms = Callable[..., KmsStack]


@pytest.fixture
async def make_kms() -> AsyncIterator[MakeKms]:
    """Builds (not opens) KMS stacks; closes every one afterwards."""
    made: list[KmsStack] = []

    def make(repo: KeyRepo | None = None, seed: str = SEED, **overrides: Any) -> KmsStack:
        options = {
            k: overrides.pop(k) for k in ("events", "audit", "users_pii", "clock", "algorithm") if k in overrides
        }
        stack = build_kms(repo or MemoryKeyRepo(), seed=seed, salt=SALT, config=kms_config(**overrides), **options)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        await stack.close()


@pytest.fixture
async def kms(make_kms: MakeKms) -> KmsStack:
    return await make_kms().open()
