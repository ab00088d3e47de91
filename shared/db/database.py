"""Connections: one asyncpg pool per process, built once (API lifespan, worker start-up, CLI).

SQLAlchemy is the schema's source (``shared.db.models``, Alembic) and the builder for queries
with optional filters (``compile_query``); statements run on the asyncpg pool. Measured on this
machine, a transaction through the ORM's async session costs ~1.2 ms of CPU against ~0.45 ms at
driver level, so request-time code runs at driver cost, in one transaction per request or job
(see ``Database.transaction``); services never commit.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

from shared.db.connection import SERVER_SETTINGS, Connection, configure
from shared.db.urls import driver_url
from shared.metrics import DB_GROUP_SIZE

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
PARKING_HEADROOM = 2


def compile_query(stmt: ClauseElement) -> tuple[str, Sequence[Any]]:
    """SQL text with ``$n`` placeholders and its arguments, for a SQLAlchemy Core statement."""
    compiled = stmt.compile(dialect=_DIALECT)
    params = compiled.params
    order: list[str] = getattr(compiled, "positiontup", None) or []
    return compiled.string, [params[name] for name in order]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``), a round trip per checkout that measured 25-40 % of the
    database CPU of a trivial job. Safe because nothing here changes session state: locks are
    transaction-scoped, no SET, LISTEN or session cursors. asyncpg still ends any open
    transaction before calling this."""


def usable(conn: Connection) -> bool:
    """The connection is still open (a pool's connection that died is taken back by the pool,
    and its proxy then refuses every call)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # it died, and its pool took the proxy back already
        return False


class _Checkout:
    """``Database.acquire()``: a semaphore slot, then a connection (parked, or the pool's)."""

    __slots__ = ("_conn", "_db", "_runner", "_timeout")

    def __init__(self, db: Database, timeout: float | None, *, runner: bool = False) -> None:
        self._db = db
        self._timeout = timeout
        self._runner = runner  # a statement runner's (``Database.fetchrow``): not counted
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        if self._timeout is None:
            return await self._enter()
        async with asyncio.timeout(self._timeout):  # one deadline for both waits
            return await self._enter()

    async def _enter(self) -> Connection:
        db = self._db
        if self._runner:
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


MAX_GROUP = 16
"""The most statements ``Database.fetchrow(..., order=...)`` commits together. Measured
(pgbench, one pipelined transaction of n restocks): database CPU per restock 0.47 ms alone,
0.35 at 4, 0.27 at 8, 0.26 at 16; a longer group holds its rows longer for little more."""

RUNNERS = 4
"""The most statement runners (connections sending queued statements) at a time. Each holds
a group in flight; groups on the same hot rows queue on each other's row locks inside the
database, unordered, so more runners lengthen the tail; fewer leave one slow commit holding
up a larger share. Measured (``bench/restock.sh``), p99/p50 of restocks on 5 hot SKUs: 10
runners 3.6-3.7, 4-5 runners 2.4-2.9; 2 runners: random SKUs 6.4."""


@dataclass(slots=True)
class _Queued:
    query: str
    args: Sequence[Any]
    future: asyncio.Future[asyncpg.Record | None]
    order: Any  # the sort key of a statement that may commit in a group; None: alone


@dataclass(slots=True)
class Database:
    pool: asyncpg.Pool
    slots: asyncio.Semaphore
    parking: bool = False
    parked: list[Connection] = field(default_factory=list)
    waiting: int = 0  # ``acquire`` callers waiting for a slot (statement runners aside)
    queued: collections.deque[_Queued] = field(default_factory=collections.deque)
    runners: set[asyncio.Task[None]] = field(default_factory=set)

    async def fetchrow(self, query: str, *args: Any, order: Any = None) -> asyncpg.Record | None:
        """One statement outside any transaction of the caller's, as ``asyncpg.Pool.fetchrow``,
        on the first connection to come free; with ``order``, committed together with other
        statements of the same text (group commit).

        The statement is queued, and runner tasks (at most ``RUNNERS``), each holding a
        connection, send the queued statements: a runner whose statement has returned sends
        the next in the same step. (With ``acquire``, a connection freed under load wakes its
        next waiter, which sends one turn of the event loop later; under load a turn is a
        millisecond or more, and the database sat idle waiting for the API 55 % of the time,
        against 46 % this way.) A runner gives its connection back after a statement when an
        ``acquire`` caller is waiting, so the other requests get their turn in arrival order.

        Without ``order`` the statement commits alone, and its error is its caller's.

        With ``order`` (a sort key, never None), a runner takes the statement together with
        the ones of the same text behind it in the queue (up to ``MAX_GROUP``) and sends them
        as one implicit transaction (asyncpg's ``fetchmany``: one round trip, one commit and
        one WAL flush for the group; a restock's database CPU 0.40 -> 0.21-0.25 ms). Such a
        statement must return exactly one row and be right to run in one transaction with
        others of its kind, each seeing the ones before it. A group runs in ``order``: the
        order in which the statements lock rows, which must be every other path's order for
        the same rows, so that groups cannot deadlock with each other or with those paths.
        An error of the database's rolls the whole group back: then each statement goes back
        to the head of the queue to run alone, and its own result or error goes to its
        caller. Any other error (the connection broke: the group may have committed or not)
        goes to every caller of the group, as it would to a lone statement's.

        A caller cancelled while its statement is queued takes it out of the queue; one
        cancelled while it runs lets it finish (it commits or not, as a client's disconnect
        after sending would)."""
        future: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        self.queued.append(_Queued(query, args, future, order))
        if len(self.runners) < min(RUNNERS, self.slots_total):
            self.runners.add(asyncio.create_task(self._run_queued()))
        return await future

    @property
    def slots_total(self) -> int:
        return self.pool.get_max_size() - (PARKING_HEADROOM if self.parking else 0)

    async def _run_queued(self) -> None:
        queued = self.queued
        try:
            while queued:
                checkout = _Checkout(self, None, runner=True)
                try:
                    conn = await checkout.__aenter__()
                except Exception as exc:  # no connection (the database is away...): the
                    # next caller gets the error, the others a try of their own
                    _fail(queued.popleft().future, exc)
                    continue
                try:
                    await self._send_queued(conn)
                except BaseException as exc:  # the connection broke, or cancellation: the
                    # pool's release cleans the connection up
                    await checkout.__aexit__(type(exc), exc, exc.__traceback__)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    await checkout.__aexit__(None, None, None)
        except BaseException:
            while queued:
                queued.popleft().future.cancel()
            raise
        finally:
            # here, not in a done callback (a loop turn later): a statement queued meanwhile
            # would find the runners all taken and wait for ever
            task = asyncio.current_task()
            assert task is not None
            self.runners.discard(task)

    async def _send_queued(self, conn: Connection) -> None:
        """Send the queued statements on ``conn`` while there are some and no ``acquire``
        caller waits; a connection's error (or a cancellation) goes to its statement's caller
        and is raised."""
        queued = self.queued
        while queued:
            first = queued.popleft()
            if first.future.done():  # its caller was cancelled
                continue
            if first.order is None:
                if not await _send_one(conn, first):
                    return
            else:
                group = [first]
                while queued and len(group) < MAX_GROUP:
                    item = queued[0]
                    if item.order is None or item.query != first.query:
                        break
                    queued.popleft()
                    if not item.future.done():
                        group.append(item)
                if not await self._send_group(conn, group):
                    return
            if self.waiting:  # an ``acquire`` caller has its turn
                return

    async def _send_group(self, conn: Connection, group: list[_Queued]) -> bool:
        """Run statements queued with ``order`` as one implicit transaction; False when the
        connection can no longer be used. See ``fetchrow``."""
        DB_GROUP_SIZE.observe(len(group))
        if len(group) == 1:
            return await _send_one(conn, group[0])
        group.sort(key=lambda item: item.order)
        try:
            rows = await conn.fetchmany(group[0].query, [item.args for item in group])
        except asyncpg.PostgresError as exc:
            if not usable(conn):
                # the server ended the session: whether the group committed is unknown, so,
                # as for a lone statement, the error is every caller's
                _fail_all(group, exc)
                return False
            # one statement failed, and the group was rolled back: each goes again, alone,
            # first in the queue (any runner may take it; a wait on a lock, or a timeout, then
            # holds up only its own); a caller cancelled meanwhile has nothing to run
            for item in group:
                item.order = None
            self.queued.extendleft(reversed(group))
            return True
        except BaseException as exc:
            _fail_all(group, exc)
            raise
        if len(rows) != len(group):  # a statement that is not for ``order``: a bug
            error = RuntimeError(f"{len(group)} grouped statements returned {len(rows)} rows")
            _fail_all(group, error)
            return True
        for item, row in zip(group, rows, strict=True):
            if not item.future.done():
                item.future.set_result(row)
        return True

    def acquire(self, timeout: float | None = None) -> _Checkout:
        """A pooled connection, handed out first come, first served.

        asyncpg's pool lets a newcomer take a connection just released to a waiter
        (``asyncio.Queue.get`` re-queues the woken waiter at the back when it finds the
        queue empty again), so under load some requests wait many times longer than the rest
        (measured: restock p99 5x p50 at 64 connections). A FIFO semaphore of the pool's size
        in front of it admits in arrival order, and the pool then never makes anyone wait.

        With ``parking`` (the API), a connection that comes back cleanly is parked here,
        still checked out of the pool, for the next ``acquire``: the pool's own acquire and
        release (a task per release, timeouts, a proxy) cost ~70 us of CPU per checkout,
        ~10 % of a restock. A checkout that ends in an error or a cancellation goes back
        through the pool's release, which knows how to clean a connection up."""
        return _Checkout(self, timeout)

    @classmethod
    async def connect(
        cls,
        url: str,
        pool_size: int = 10,
        *,
        session: dict[str, str] | None = None,
        parking: bool = False,
    ) -> Database:
        """``session``: settings for every connection of the pool, on top of
        ``SERVER_SETTINGS`` (the API's limits, say). ``parking``: see ``acquire``; the pool
        then has two connections more than ``acquire`` hands out, for the callers that use
        it directly (the readiness probe, ``/metrics``), since parked ones never return."""
        pool = await asyncpg.create_pool(
            driver_url(url),
            min_size=1,
            max_size=pool_size + PARKING_HEADROOM if parking else pool_size,
            init=configure,
            reset=_keep_session,
            server_settings={**SERVER_SETTINGS, **(session or {})},
            max_inactive_connection_lifetime=60,
        )
        assert pool is not None
        return cls(pool=pool, slots=asyncio.Semaphore(pool_size), parking=parking)

    async def close(self) -> None:
        for runner in list(self.runners):
            runner.cancel()
        await asyncio.gather(*self.runners, return_exceptions=True)
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


async def _send_one(conn: Connection, item: _Queued) -> bool:
    """Run one queued statement; False when the connection is no longer usable."""
    try:
        row = await conn.fetchrow(item.query, *item.args)
    except asyncpg.PostgresError as exc:  # the statement's own
        _fail(item.future, exc)
        return usable(conn)  # not: the server ended the session (an admin, a restart)
    except BaseException as exc:
        _fail(item.future, exc)
        raise
    if not item.future.done():
        item.future.set_result(row)
    return True


def _fail_all(group: list[_Queued], exc: BaseException) -> None:
    """The same error for every caller of a group."""
    for item in group:
        _fail(item.future, exc)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
