"""Which driver failures a repository turns into SERVICE_UNAVAILABLE, and which it lets through."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions

from internal.biz.errors import Unavailable
from internal.data.errors import translate_driver_errors

# Each of these was seen (or is documented) while PostgreSQL or Redis shuts down, restarts or is
# overloaded; none says anything about the request.
OUTAGES = [
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.ConnectionFailureError("connection failure"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another server process"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.OutOfMemoryError("out of memory"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.InterfaceError("connection is closed"),
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError(),
    redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
]


@pytest.mark.parametrize("failure", OUTAGES, ids=lambda exc: type(exc).__name__)
async def test_outages_become_service_unavailable(failure: BaseException) -> None:
    @translate_driver_errors
    async def query() -> None:
        raise failure

    with pytest.raises(Unavailable) as err:
        await query()
    assert err.value.reason == "SERVICE_UNAVAILABLE"
    assert not str(failure) or str(failure) not in err.value.message
    assert err.value.__cause__ is failure


@pytest.mark.parametrize(
    "failure",
    [asyncpg.UniqueViolationError("duplicate key"), asyncpg.DataError("invalid input"), ValueError("bug")],
    ids=lambda exc: type(exc).__name__,
)
async def test_other_errors_pass_through(failure: Exception) -> None:
    """Constraint violations are handled by the repository that expects them; anything else is a bug
    and must surface as one, not be disguised as an outage."""

    @translate_driver_errors
    async def query() -> None:
        raise failure

    with pytest.raises(type(failure)) as err:
        await query()
    assert err.value is failure
