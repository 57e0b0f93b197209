"""In-memory KMS for unit tests: the real manager and crypto service over MemoryKeyStorage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from internal.conf.config import Kms
from internal.pkg.kms.manager import KMSManager
from internal.pkg.kms.storage import KeyStorage
from internal.pkg.kms.storage_memory import MemoryKeyStorage

SEED = "unit-test-seed-0123456789"
SALT = "unit-salt"


def kms_config(**overrides: Any) -> Kms:
    values: dict[str, Any] = {"iterations": 10_000, "cache_recheck_interval": timedelta(seconds=0.05)}
    values.update(overrides)
    return Kms(**values)


async def until(predicate: Callable[[], object], within: float = 2.0) -> None:
    """Poll a condition that changes in background tasks (fails with TimeoutError after ``within``)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the state lives in another component, no event to wait on
            await asyncio.sleep(0.01)


class CountingStorage:
    """Wraps a KeyStorage and counts every call, to prove the steady state makes none."""

    def __init__(self, inner: KeyStorage) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attr(*args, **kwargs)

        return counted


@pytest.fixture
def make_manager() -> Callable[..., KMSManager]:
    def make(storage: KeyStorage | None = None, seed: str = SEED, **overrides: Any) -> KMSManager:
        return KMSManager(kms_config(**overrides), storage or MemoryKeyStorage(), seed=seed, salt=SALT)

    return make


@pytest.fixture
async def manager(make_manager: Callable[..., KMSManager]) -> AsyncIterator[KMSManager]:
    m = make_manager()
    await m.initialize()
    try:
        yield m
    finally:
        await m.close()
