"""Which failures are worth another attempt."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import redis.exceptions


class TransientJobError(Exception):
    """Raise from a job handler for a failure that may pass (a 5xx from a peer, a timeout)."""


class PermanentJobError(Exception):
    """Raise from a job handler for a failure that another attempt cannot fix."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientJobError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.QueryCanceledError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    httpx.TransportError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, PermanentJobError):
        return False
    return isinstance(exc, _TRANSIENT)


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
