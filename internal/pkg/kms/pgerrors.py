"""Driver failures of the KMS PostgreSQL adapters become ``Unavailable`` (as everywhere in data/)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from internal.data.errors import UNAVAILABLE_ERRORS, dependency_unavailable

P = ParamSpec("P")
T = TypeVar("T")


def translated(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Like ``internal.data.errors.translate_driver_errors``, typed as a coroutine function so the
    adapters still satisfy their Protocols under mypy."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except UNAVAILABLE_ERRORS as exc:
            raise dependency_unavailable(exc) from exc

    return wrapper
