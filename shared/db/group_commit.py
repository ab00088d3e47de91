"""Group commit: many callers' calls of one statement committed together, one transaction per
group (why and the figures: docs/decisions/003-group-commit.md).

A ``GroupCommitter`` is built once for its statement. ``commit(args, order)`` queues a call;
runner tasks (at most ``RUNNERS``), each holding a pooled connection, take the calls queued
behind them (up to ``MAX_GROUP``) and send them as one implicit transaction (asyncpg's
``fetchmany``: one round trip, one commit, one WAL flush), sorted by ``order``; a runner whose
group returned sends the next at once, in the same step of the event loop.

The statement's contract, which the caller promises by building the committer for it:
- it returns exactly one row, for every set of arguments;
- it is right to commit in one transaction with other calls of it, each seeing the ones
  before it in ``order``;
- ``order`` is the order in which it locks rows, and every other path that locks the same
  rows locks them in that order too (so groups deadlock neither with each other nor with
  those paths).

What a caller gets:
- its own row, once its group committed;
- its own error, when the database refused its call: a group rolled back by one call's error
  goes back to the head of the queue, each call to run alone;
- ``DatabaseUnavailable``, when the database did not answer: no connection (each call queued
  then fails at once, none ran), or the connection broke while its group ran (the group may
  have committed or not: a retry under the same Idempotency-Key finds out). No runner dies of
  it; the calls queued behind go on, on a new connection.
A caller cancelled while its call is queued takes the call out; one cancelled while its group
runs lets the group finish (it commits or not, as a client's disconnect after sending would).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import asyncpg

from shared.db.connection import Connection
from shared.db.database import Database, is_connection_failure, unavailable, usable
from shared.metrics import DB_GROUP_SIZE

log = logging.getLogger("stockroom.db")

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

    Order = TypeVar("Order", bound=SupportsRichComparison)
else:
    Order = TypeVar("Order")

MAX_GROUP = 16
"""The most calls committed together (a longer group holds its rows longer for little more;
figures in docs/decisions/003-group-commit.md)."""

RUNNERS = 4
"""The most runners (connections sending groups) of one committer at a time. Groups on the same
hot rows queue on each other's row locks inside the database, so more runners lengthen the
tail; fewer leave one slow commit holding up a larger share (figures in the same record)."""


@dataclass(slots=True)
class _Call(Generic[Order]):
    args: Sequence[Any]
    order: Order
    future: asyncio.Future[asyncpg.Record]
    alone: bool = False  # back from a group its error rolled back: it runs by itself


class GroupCommitter(Generic[Order]):
    """Commits calls of ``query`` in groups, as the module says."""

    def __init__(self, db: Database, query: str) -> None:
        self.db = db
        self.query = query
        self.queued: collections.deque[_Call[Order]] = collections.deque()
        self.runners: set[asyncio.Task[None]] = set()

    async def commit(self, args: Sequence[Any], order: Order) -> asyncpg.Record:
        """Queue a call of the statement with ``args``; its row once its group committed."""
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self.queued.append(_Call(args, order, future))
        if len(self.runners) < min(RUNNERS, self.db.slots_total):
            self.runners.add(asyncio.create_task(self._run()))
        return await future

    async def close(self) -> None:
        """Cancel the runners and every call still queued (the process is stopping)."""
        for runner in list(self.runners):
            runner.cancel()
        await asyncio.gather(*self.runners, return_exceptions=True)
        while self.queued:
            self.queued.popleft().future.cancel()

    async def _run(self) -> None:
        """A runner: a connection, the queued groups on it until the queue is empty or an
        ``acquire`` caller waits, and again; it ends when the queue is empty, or cancelled."""
        try:
            while self.queued:
                checkout = self.db.acquire(counted=False)
                try:
                    conn = await checkout.__aenter__()
                except Exception as exc:  # no connection (``DatabaseUnavailable``...): the
                    # calls queued now fail as one, none of them ran
                    while self.queued:
                        _fail(self.queued.popleft().future, exc)
                    return
                try:
                    await self._send_queued(conn)
                except BaseException as exc:  # the connection broke (its group's callers
                    # have the error; the calls behind go on, on another), or cancelled
                    await _give_back(checkout, exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    await _give_back(checkout, None)
        finally:
            # here, not in a done callback (a loop turn later): a call queued meanwhile would
            # find the runners all taken and wait for ever
            task = asyncio.current_task()
            assert task is not None
            self.runners.discard(task)

    async def _send_queued(self, conn: Connection) -> None:
        """Send groups on ``conn`` while calls are queued and no ``acquire`` caller waits; a
        connection's failure is raised, once its group's callers have it."""
        queued = self.queued
        while queued:
            group = [queued.popleft()]
            if group[0].future.done():  # its caller was cancelled
                continue
            while not group[0].alone and queued and not queued[0].alone:
                if len(group) == MAX_GROUP:
                    break
                call = queued.popleft()
                if not call.future.done():
                    group.append(call)
            await self._send_group(conn, group)
            if self.db.waiting:  # an ``acquire`` caller has its turn
                return

    async def _send_group(self, conn: Connection, group: list[_Call[Order]]) -> None:
        DB_GROUP_SIZE.observe(len(group))
        group.sort(key=lambda call: call.order)
        try:
            rows = await conn.fetchmany(self.query, [call.args for call in group])
        except Exception as exc:
            if is_connection_failure(exc) or not usable(conn):
                # whether the group committed is unknown: the error is every caller's
                _fail_all(group, unavailable(exc))
                raise
            if len(group) == 1:  # its own error
                _fail(group[0].future, exc)
                return
            # one call failed and the group was rolled back: each goes again, alone, first
            # in the queue (any runner may take it; a wait on a lock, or a timeout, then holds
            # up only its own); a caller cancelled meanwhile has nothing to run
            for call in group:
                call.alone = True
            self.queued.extendleft(reversed(group))
            return
        except BaseException as exc:  # cancelled (the process stops): so are its callers
            _fail_all(group, exc)
            raise
        if len(rows) != len(group):  # a statement that breaks the contract: a bug
            _fail_all(group, RuntimeError(f"{len(group)} calls returned {len(rows)} rows"))
            return
        for call, row in zip(group, rows, strict=True):
            if not call.future.done():
                call.future.set_result(row)


async def _give_back(checkout: AbstractAsyncContextManager[Any], exc: BaseException | None) -> None:
    """End a runner's checkout; the pool's release of a broken connection may raise, and a
    runner must outlive that (the slot is released whatever happens)."""
    try:
        await checkout.__aexit__(type(exc) if exc else None, exc, None)
    except Exception as error:
        log.warning("releasing a broken connection: %s: %s", type(error).__name__, error)


def _fail_all(group: list[_Call[Any]], exc: BaseException) -> None:
    """The same error for every caller of a group."""
    for call in group:
        _fail(call.future, exc)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
