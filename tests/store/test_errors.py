"""The classification of database errors (``scheduler_node/store/errors.py``): transient ones are ridden out."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from scheduler_node.store.errors import describe, is_transient


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
        OSError(113, "No route to host"),
        TimeoutError(),
        asyncio.TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError(
            "terminating connection because of crash of another server process"
        ),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.LockNotAvailableError("could not obtain lock"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        asyncpg.InterfaceError("pool is closing"),
        # seen when a fast shutdown's notice reached a pooled connection between two statements
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ],
)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.UndefinedTableError('relation "jobz" does not exist'),
        asyncpg.PostgresSyntaxError("syntax error at or near"),
        asyncpg.DataError("invalid input syntax for type uuid"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InternalClientError("unexpected codec"),
        ValueError("bad argument"),
        KeyError("x"),
    ],
)
def test_bugs_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_describe_is_one_line_with_the_sqlstate() -> None:
    e = asyncpg.CannotConnectNowError("the database system is starting up\nDETAIL: more")
    assert describe(e) == "CannotConnectNowError 57P03: the database system is starting up"
    assert describe(TimeoutError()) == "TimeoutError"
