"""Driver failures become domain errors here, so no asyncpg/redis message ever reaches a client."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg
import redis.exceptions

from internal.biz.errors import Unavailable

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# Errors that mean "the dependency is down, restarting or overloaded", not "the request is wrong".
# PostgreSQL classes 08 (connection exception), 53 (insufficient resources) and 57 (operator
# intervention: shutdown, restart, cancel) are matched by their base classes. InternalClientError is how
# asyncpg reports a connection the server terminated between two statements ("cannot switch to state
# 12; another operation is in progress"); the pool discards such a connection when it is released.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def dependency_unavailable(exc: BaseException) -> Unavailable:
    log.warning("dependency unavailable", extra={"error": type(exc).__name__})
    return Unavailable("SERVICE_UNAVAILABLE", "a backing service is unavailable; retry later")


def translate_driver_errors(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorator for repository methods: connection-level failures → Unavailable."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except UNAVAILABLE_ERRORS as exc:
            raise dependency_unavailable(exc) from exc

    return wrapper
