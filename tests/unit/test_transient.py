"""``shared.jobs.retry.is_transient``: which failures a job retries and which fail it at once."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
import redis.exceptions

from shared.jobs.retry import PermanentJobError, TransientJobError, is_transient

REQUEST = httpx.Request("POST", "http://receiver.test/hook")


@pytest.mark.parametrize(
    "failure",
    [
        TransientJobError("receiver answered 503"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        OSError("network unreachable"),
        asyncpg.PostgresConnectionError("connection lost"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        redis.exceptions.ConnectionError("Redis is down"),
        redis.exceptions.TimeoutError("Redis timed out"),
        httpx.ConnectError("refused", request=REQUEST),
        httpx.ReadTimeout("slow receiver", request=REQUEST),
    ],
    ids=type,
)
def test_transient_failures_are_retried(failure: BaseException) -> None:
    assert is_transient(failure)


@pytest.mark.parametrize(
    "failure",
    [
        PermanentJobError("the report request is not valid"),
        ValueError("bad parameter"),
        KeyError("sku"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.UndefinedTableError("relation does not exist"),
        redis.exceptions.ResponseError("WRONGTYPE"),
        httpx.HTTPStatusError("404", request=REQUEST, response=httpx.Response(404)),
        asyncio.CancelledError(),
    ],
    ids=type,
)
def test_permanent_failures_fail_at_once(failure: BaseException) -> None:
    assert not is_transient(failure)


def test_permanent_wins_over_a_transient_base() -> None:
    class ReceiverGone(PermanentJobError, ConnectionError):
        pass

    assert not is_transient(ReceiverGone("the receiver's host does not exist"))
