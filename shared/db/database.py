"""The connection pool: one per process, built once (API lifespan, worker start-up, CLI).

SQLAlchemy is the schema's source (``shared.db.models``, Alembic) and the builder for queries
with optional filters (``compile_query``); statements run on asyncpg's pool at driver cost, in
one transaction per request or job (``Database.transaction``); services never commit (why:
docs/decisions/001-asyncpg-at-run-time.md).

``Database`` adds to asyncpg's pool a first-come checkout, parking (the API), timeouts, and one
typed error for a database that does not answer (``DatabaseUnavailable``). Statements that
commit in groups go through ``shared.db.group_commit``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

from shared.db.connection import SERVER_SETTINGS, Connection, configure
from shared.db.urls import driver_url
from shared.errors import DatabaseUnavailable

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
PARKING_HEADROOM = 2
log = logging.getLogger("stockroom.db")


def compile_query(stmt: ClauseElement) -> tuple[str, Sequence[Any]]:
    """SQL text with ``$n`` placeholders and its arguments, for a SQLAlchemy Core statement."""
    compiled = stmt.compile(dialect=_DIALECT)
    params = compiled.params
    order: list[str] = getattr(compiled, "positiontup", None) or []
    return compiled.string, [params[name] for name in order]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``), a round trip per checkout (its cost: docs/decisions/001). Safe
    because nothing here changes session state: locks are transaction-scoped, no SET, LISTEN
    or session cursors. asyncpg still ends any open transaction before calling this."""


def usable(conn: Connection) -> bool:
    """The connection is still open (a pool's connection that died is taken back by the pool,
    and its proxy then refuses every call)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # it died, and its pool took the proxy back already
        return False


CONNECTION_FAILURES: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)
"""The exception types of ``is_connection_failure`` (for handlers registered by type); an
``OSError`` of another kind counts only where a connection is being opened (``acquire``)."""


def is_connection_failure(exc: BaseException) -> bool:
    """The database did not answer, as opposed to answering with an error of the statement's:
    refused or timed-out connects, a server starting up or shutting down (SQLSTATE classes 08
    and 57P), a connection that broke or was closed under the caller."""
    if isinstance(exc, asyncpg.InterfaceError):  # "connection is closed"; not its subclasses
        return type(exc) is asyncpg.InterfaceError  # (DataError: a parameter it cannot encode)
    return isinstance(exc, CONNECTION_FAILURES)


class _FailureOnOneLine(logging.Filter):
    """asyncpg's pool logs each failed try to reconnect its floor of connections with a
    traceback; a database away is not a bug here: one line, the error's name and text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_FailureOnOneLine())


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """The one error a caller sees for ``exc``, a connection failure, logged as one line (the
    failure is the database's, not a bug here: no traceback)."""
    detail = f"the database is unavailable ({type(exc).__name__}); retry shortly"
    log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
    error = DatabaseUnavailable(detail)
    error.__cause__ = exc
    return error


class _Checkout:
    """``Database.acquire()``: a slot in arrival order, then a connection (parked, or the
    pool's), within one deadline for both."""

    __slots__ = ("_conn", "_counted", "_db", "_timeout")

    def __init__(self, db: Database, timeout: float | None, *, counted: bool = True) -> None:
        self._db = db
        self._timeout = timeout
        self._counted = counted  # in ``Database.waiting`` (a group committer's runner is not)
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        try:
            if self._timeout is None:
                return await self._enter()
            async with asyncio.timeout(self._timeout):  # one deadline for both waits
                return await self._enter()
        except Exception as exc:
            if isinstance(exc, OSError) or is_connection_failure(exc):  # OSError: connecting
                raise unavailable(exc) from exc
            raise

    async def _enter(self) -> Connection:
        db = self._db
        if not self._counted:
            await db.slots.acquire()
        else:
            db.waiting += 1
            try:
                await db.slots.acquire()
            finally:
                db.waiting -= 1
        try:
            parked = db.parked
            while parked:
                conn = parked.pop()  # the most recently used: its caches are warm
                if usable(conn):
                    self._conn = conn
                    return conn
                # gone (a server restart...): the pool drops it
                await db.pool.release(conn)  # type: ignore[arg-type]
            self._conn = await db.pool.acquire()
        except BaseException:
            db.slots.release()
            raise
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        db, conn = self._db, self._conn
        assert conn is not None
        try:
            if db.parking and exc_type is None and usable(conn) and not conn.is_in_transaction():
                db.parked.append(conn)
            else:
                # an error or a cancellation may leave it mid-query: the pool's release
                # cancels, rolls back or closes it as needed
                await db.pool.release(conn)  # type: ignore[arg-type]
        finally:
            db.slots.release()


@dataclass(slots=True)
class Database:
    """asyncpg's pool behind a first-come checkout (``acquire``), with parking."""

    pool: asyncpg.Pool
    slots: asyncio.Semaphore
    parking: bool = False
    checkout_timeout: float | None = None  # ``acquire``'s deadline when it is given none
    parked: list[Connection] = field(default_factory=list)
    waiting: int = 0  # ``acquire`` callers waiting for a slot (group committers' runners aside)

    @property
    def slots_total(self) -> int:
        return self.pool.get_max_size() - (PARKING_HEADROOM if self.parking else 0)

    def acquire(self, timeout: float | None = None, *, counted: bool = True) -> _Checkout:
        """A pooled connection, handed out first come, first served, within ``timeout`` (or
        ``checkout_timeout``) seconds; ``DatabaseUnavailable`` when the database does not
        answer or no connection comes free in time.

        asyncpg's pool lets a newcomer take a connection just released to a waiter
        (``asyncio.Queue.get`` re-queues the woken waiter at the back when it finds the
        queue empty again: https://github.com/MagicStack/asyncpg/issues/1247), so under load
        some requests wait many times longer than the rest. A FIFO semaphore of the pool's
        size in front of it admits in arrival order, and the pool then never makes anyone
        wait.

        With ``parking`` (the API), a connection that comes back cleanly is parked here,
        still checked out of the pool, for the next ``acquire``: the pool's own acquire and
        release (a task per release, timeouts, a proxy) are skipped. A checkout that ends in
        an error or a cancellation goes back through the pool's release, which knows how to
        clean a connection up. ``counted=False``: not in ``waiting`` (see
        ``shared.db.group_commit``)."""
        deadline = self.checkout_timeout if timeout is None else timeout
        return _Checkout(self, deadline, counted=counted)

    @classmethod
    async def connect(
        cls,
        url: str,
        pool_size: int = 10,
        *,
        session: dict[str, str] | None = None,
        parking: bool = False,
        connect_timeout: float = 60,
        command_timeout: float | None = None,
        checkout_timeout: float | None = None,
    ) -> Database:
        """``session``: settings for every connection of the pool, on top of
        ``SERVER_SETTINGS`` (the API's limits, say). ``parking``: see ``acquire``; the pool
        then has two connections more than ``acquire`` hands out, for the callers that use
        it directly (the readiness probe, ``/metrics``), since parked ones never return.
        ``connect_timeout``: for opening a connection; ``command_timeout``: asyncpg's default
        for each statement (None: none); ``checkout_timeout``: ``acquire``'s default."""
        pool = await asyncpg.create_pool(
            driver_url(url),
            min_size=1,
            max_size=pool_size + PARKING_HEADROOM if parking else pool_size,
            init=configure,
            reset=_keep_session,
            server_settings={**SERVER_SETTINGS, **(session or {})},
            max_inactive_connection_lifetime=60,
            timeout=connect_timeout,
            command_timeout=command_timeout,
        )
        assert pool is not None
        return cls(
            pool=pool,
            slots=asyncio.Semaphore(pool_size),
            parking=parking,
            checkout_timeout=checkout_timeout,
        )

    async def close(self) -> None:
        self.parking = False
        parked, self.parked = self.parked, []
        for conn in parked:
            await self.pool.release(conn)  # type: ignore[arg-type]
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside one transaction: commit on success, rollback on error."""
        async with self.acquire() as conn, conn.transaction():
            yield conn

    async def ping(self) -> bool:
        """Straight from the pool, not in the queue of ``acquire``: a readiness probe must not
        wait behind every request in flight (and flip to 503 because the API is busy)."""
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
        except Exception:
            return False
        return True
