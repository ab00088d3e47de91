"""The connection pool hands connections out in arrival order. asyncpg's own queue does not:
a connection released to a waiter can be taken by a task that asks before the waiter runs
(its ``asyncio.Queue.get`` then re-queues the waiter at the back), which under load made some
requests wait many times longer than the rest (restock p99 4-5x p50; with the fair checkout
1.4x)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from shared.db.database import MAX_GROUP, Database, usable
from tests.conftest import Env
from tests.waiting import eventually, holds

Acquire = Callable[[Database], AbstractAsyncContextManager[Any]]


async def _arrival_order(env: Env, acquire: Acquire, parking: bool = False) -> list[str]:
    """Two tasks queue for the only connection; as its holder lets go, a third task that
    became ready meanwhile asks for it: who gets it, in which order?"""
    db = await Database.connect(env.database_url, pool_size=1, parking=parking)
    order: list[str] = []
    queued: list[str] = []
    newcomer_ready = asyncio.Event()

    async def use(name: str) -> None:
        async with acquire(db) as conn:
            order.append(name)
            await conn.fetchval("SELECT 1")

    async def waiter(name: str) -> None:
        queued.append(name)  # and asks in the same step: once named, it is queued
        await use(name)

    async def newcomer() -> None:
        await newcomer_ready.wait()
        # One more turn of the loop: the release under way gets to hand the connection back
        # before this task asks, as happens all the time on a busy loop.
        await asyncio.sleep(0)
        await use("newcomer")

    try:
        late = asyncio.create_task(newcomer())
        async with acquire(db) as conn:
            await conn.fetchval("SELECT 1")
            waiters = [asyncio.create_task(waiter(name)) for name in ("first", "second")]
            await eventually(lambda: holds(len(queued) == 2), what="both waiters to queue")
            newcomer_ready.set()
        await asyncio.gather(*waiters, late)
    finally:
        await db.close()
    return order


async def test_a_released_connection_goes_to_the_longest_waiter(env: Env) -> None:
    order = await _arrival_order(env, lambda db: db.acquire())
    assert order == ["first", "second", "newcomer"], (
        f"connections were handed out in the order {order}: a newcomer got past the waiters"
    )


async def test_parked_connections_go_to_the_longest_waiter_too(env: Env) -> None:
    order = await _arrival_order(env, lambda db: db.acquire(), parking=True)
    assert order == ["first", "second", "newcomer"], order


async def test_asyncpgs_own_pool_lets_a_newcomer_barge(env: Env) -> None:
    """What the fair checkout is for (if asyncpg's pool ever becomes fair, this fails and
    ``Database.acquire`` can go)."""
    order = await _arrival_order(env, lambda db: db.pool.acquire())
    assert order[0] == "newcomer", order


async def test_the_checkout_limit_applies_to_timeouts(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=1)
    try:
        async with db.acquire():
            try:
                async with db.acquire(timeout=0.2):
                    raise AssertionError("a second checkout of a pool of one succeeded")
            except TimeoutError:
                pass
        async with db.acquire(timeout=1) as conn:  # and the slot was not lost
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await db.close()


# --- parking (the API's pool) --------------------------------------------------------------------


async def test_a_clean_checkout_parks_its_connection_for_the_next(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=2, parking=True)
    try:
        async with db.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert len(db.parked) == 1
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        # without parking, the connection goes back to the pool
        plain = await Database.connect(env.database_url, pool_size=2)
        try:
            async with plain.acquire():
                pass
            assert plain.parked == []
        finally:
            await plain.close()
    finally:
        await db.close()


async def test_a_cancelled_checkout_is_cleaned_up_by_the_pool_not_parked(env: Env) -> None:
    """A request cancelled mid-query (its client went away, a timeout) leaves its connection
    busy: parked as it is, the next request would meet a query in progress. It goes back
    through the pool's release, which cancels the query."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    watcher = await Database.connect(env.database_url, pool_size=1)
    try:
        pids: list[int] = []

        async def slow() -> None:
            async with db.acquire() as conn:
                pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
                await conn.execute("SELECT pg_sleep(30)")

        async def state() -> str | None:
            async with watcher.acquire() as w:
                value: str | None = await w.fetchval(
                    "SELECT state FROM pg_stat_activity WHERE pid = $1", pids[0]
                )
            return value

        task = asyncio.create_task(slow())
        await eventually(lambda: holds(bool(pids)), what="the slow query's connection")
        await eventually(lambda: _is(state(), "active"), what="the slow query running")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert db.parked == []
        async with db.acquire(timeout=5) as conn:  # the slot is back, and a usable connection
            assert await conn.fetchval("SELECT 1") == 1
        await eventually(lambda: _is(state(), "idle", None), what="the slow query cancelled")
    finally:
        await watcher.close()
        await db.close()


async def test_a_parked_connection_that_died_is_replaced(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    watcher = await Database.connect(env.database_url, pool_size=1)
    try:
        async with db.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        (parked,) = db.parked
        async with watcher.acquire() as w:
            await w.execute("SELECT pg_terminate_backend($1)", pid)
        await eventually(lambda: holds(not usable(parked)), what="the client to see it closed")
        async with db.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await watcher.close()
        await db.close()


async def test_the_pool_keeps_room_for_its_direct_users_while_connections_are_parked(
    env: Env,
) -> None:
    """The readiness probe and /metrics use the pool directly: parked connections never go
    back to it, so it has two more than ``acquire`` hands out."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    try:
        async with db.acquire():
            assert await asyncio.wait_for(db.ping(), timeout=10)
        assert len(db.parked) == 1
        assert await asyncio.wait_for(db.ping(), timeout=10)
    finally:
        await db.close()


async def _is(value: Any, *expected: object) -> bool:
    return (await value) in expected


# --- Database.fetchrow: a statement on the first connection free ------------------------------


async def test_queued_statements_run_back_to_back_on_one_connection(env: Env) -> None:
    """A runner whose statement returned sends the next before its caller even resumes (an
    ``acquire`` waiter would send it one loop turn later)."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    try:
        left_when_done: list[int] = []

        async def call(i: int) -> tuple[int, int]:
            row = await db.fetchrow("SELECT pg_backend_pid(), $1::int", i)
            left_when_done.append(len(db.queued))
            assert row is not None
            return row[0], row[1]

        results = await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(5))), 20)
        assert [n for _, n in results] == [0, 1, 2, 3, 4]
        assert len({pid for pid, _ in results}) == 1
        assert left_when_done == [3, 2, 1, 0, 0]
        assert db.runners == set() and len(db.parked) == 1
    finally:
        await db.close()


async def test_a_statements_error_is_its_callers_alone(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    try:
        results = await asyncio.gather(
            db.fetchrow("SELECT pg_backend_pid()"),
            db.fetchrow("SELECT 1 / 0"),
            db.fetchrow("SELECT pg_backend_pid()"),
            return_exceptions=True,
        )
        assert isinstance(results[1], asyncpg.DivisionByZeroError)
        first, last = results[0], results[2]
        assert isinstance(first, asyncpg.Record) and isinstance(last, asyncpg.Record)
        assert first[0] == last[0]  # the connection went on
    finally:
        await db.close()


async def test_an_acquire_caller_gets_the_connection_after_the_running_statement(
    env: Env,
) -> None:
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    try:
        order: list[str] = []

        async def statement(i: int) -> None:
            await db.fetchrow("SELECT pg_sleep(0.05)")
            order.append(f"s{i}")

        async def transaction() -> None:
            async with db.acquire() as conn:
                order.append("acquire")
                await conn.fetchval("SELECT 1")

        statements = [asyncio.create_task(statement(i)) for i in range(4)]
        await eventually(lambda: holds(len(db.queued) == 3), what="s0 to be sent")
        waiter = asyncio.create_task(transaction())
        await asyncio.wait_for(asyncio.gather(*statements, waiter), timeout=20)
        assert order == ["s0", "acquire", "s1", "s2", "s3"]
    finally:
        await db.close()


async def test_a_caller_cancelled_while_queued_takes_its_statement_away(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    try:
        async with db.acquire() as conn:
            await conn.execute("CREATE SEQUENCE fetchrow_cancelled")
        slow = asyncio.create_task(db.fetchrow("SELECT pg_sleep(0.3)"))
        await eventually(lambda: holds(len(db.runners) == 1 and not db.queued), what="slow")
        cancelled = asyncio.create_task(db.fetchrow("SELECT nextval('fetchrow_cancelled')"))
        await eventually(lambda: holds(len(db.queued) == 1), what="the second to queue")
        cancelled.cancel()

        async def then() -> asyncpg.Record | None:  # in one task: no loop turn in between
            assert await db.fetchrow("SELECT 1") is not None
            await slow
            assert cancelled.cancelled()
            return await db.fetchrow("SELECT is_called FROM fetchrow_cancelled")

        row = await asyncio.wait_for(then(), timeout=20)
        assert row is not None and row[0] is False
    finally:
        async with db.acquire() as conn:
            await conn.execute("DROP SEQUENCE IF EXISTS fetchrow_cancelled")
        await db.close()


async def test_a_connection_lost_mid_statement_fails_that_statement_only(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    watcher = await Database.connect(env.database_url, pool_size=1)
    try:
        pids: list[int] = []

        async def slow() -> None:
            row = await db.fetchrow("SELECT pg_backend_pid()")
            assert row is not None
            pids.append(row[0])
            await db.fetchrow("SELECT pg_sleep(30)")

        slow_task = asyncio.create_task(slow())

        async def sleeping() -> bool:
            async with watcher.acquire() as w:
                state = await w.fetchval(
                    "SELECT state FROM pg_stat_activity WHERE pid = $1 AND query LIKE"
                    " '%pg_sleep(30)%'",
                    pids[0] if pids else 0,
                )
            return bool(state == "active")

        await eventually(sleeping, what="the slow statement to run")
        after = asyncio.create_task(db.fetchrow("SELECT pg_backend_pid()"))
        await eventually(lambda: holds(len(db.queued) == 1), what="the next to queue")
        async with watcher.acquire() as w:
            await w.execute("SELECT pg_terminate_backend($1)", pids[0])
        (failed,) = await asyncio.gather(slow_task, return_exceptions=True)
        assert isinstance(failed, asyncpg.PostgresError | asyncpg.InterfaceError), failed
        row = await asyncio.wait_for(after, timeout=20)
        assert row is not None and row[0] != pids[0]  # on a new connection
    finally:
        await watcher.close()
        await db.close()


async def test_closing_cancels_the_statements_running_and_queued(env: Env) -> None:
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    running = asyncio.create_task(db.fetchrow("SELECT pg_sleep(30)"))
    await eventually(lambda: holds(len(db.runners) == 1 and not db.queued), what="running")
    queued = asyncio.create_task(db.fetchrow("SELECT 1"))
    await eventually(lambda: holds(len(db.queued) == 1), what="queued")
    await asyncio.wait_for(db.close(), timeout=20)
    results = await asyncio.gather(running, queued, return_exceptions=True)
    assert [type(r) for r in results] == [asyncio.CancelledError, asyncio.CancelledError]


async def test_statements_one_after_the_other_each_find_a_runner(env: Env) -> None:
    """The caller of a statement resumes before the loop runs the done callbacks of the runner
    that served it: a runner still counted then would leave the next statement queued with no
    one to send it."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    try:

        async def back_to_back() -> list[int]:  # in one task: no loop turn in between
            rows = [await db.fetchrow("SELECT $1::int", i) for i in range(3)]
            return [row[0] for row in rows if row is not None]

        assert await asyncio.wait_for(back_to_back(), timeout=10) == [0, 1, 2]
    finally:
        await db.close()


# --- Database.fetchrow with order: group commit -------------------------------------------------

_GROUPED = """
WITH ins AS (INSERT INTO fetchrow_grouped (v) VALUES ($1) RETURNING v)
SELECT v, 100 / $2::int AS q, txid_current() AS txid, nextval('fetchrow_grouped_seq') AS seq
FROM ins
"""


@contextlib.asynccontextmanager
async def _held_runner(env: Env) -> AsyncIterator[tuple[Database, Callable[[], Awaitable[None]]]]:
    """A database of one connection whose only runner waits, on an advisory lock the test
    holds, until the test calls ``release`` (the statements queued meanwhile then go)."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    holder = await asyncpg.connect(env.database_url)
    await holder.execute(
        "CREATE TABLE fetchrow_grouped (v int NOT NULL);"
        " CREATE SEQUENCE fetchrow_grouped_seq; SELECT pg_advisory_lock(7007)"
    )
    blocker = asyncio.create_task(db.fetchrow("SELECT pg_advisory_xact_lock(7007)"))
    try:
        await eventually(lambda: holds(len(db.runners) == 1 and not db.queued), what="blocked")

        async def release() -> None:
            await holder.execute("SELECT pg_advisory_unlock(7007)")
            await blocker

        yield db, release
    finally:
        blocker.cancel()
        await db.close()
        await holder.execute("DROP TABLE fetchrow_grouped; DROP SEQUENCE fetchrow_grouped_seq")
        await holder.close()


async def _committed(env: Env) -> list[int]:
    conn = await asyncpg.connect(env.database_url)
    try:
        return [r[0] for r in await conn.fetch("SELECT v FROM fetchrow_grouped ORDER BY v")]
    finally:
        await conn.close()


async def test_statements_queued_with_an_order_commit_together_in_that_order(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        values = [5, *range(MAX_GROUP + 1, 7, -1), 3, 1, 4, 2, 6, 7]  # MAX_GROUP + 2 of them
        grouped = [asyncio.create_task(db.fetchrow(_GROUPED, v, 1, order=v)) for v in values]
        alone = asyncio.create_task(db.fetchrow(_GROUPED, 0, 1))  # no order: alone
        other = asyncio.create_task(db.fetchrow(_GROUPED + " ", 100, 1, order=0))  # its text
        last = asyncio.create_task(db.fetchrow(_GROUPED, 101, 1, order=0))
        await eventually(lambda: holds(len(db.queued) == len(values) + 3), what="all queued")
        await release()
        rows = await asyncio.wait_for(asyncio.gather(*grouped, alone, other, last), 20)
        committed = await _committed(env)
    assert [row["v"] for row in rows] == [*values, 0, 100, 101]  # each caller its own row
    by_value = {row["v"]: row for row in rows}
    first, rest = values[:MAX_GROUP], values[MAX_GROUP:]
    # the first MAX_GROUP in one transaction, run in their order; the rest in a second
    assert len({by_value[v]["txid"] for v in first}) == 1
    assert [by_value[v]["seq"] for v in sorted(first)] == sorted(by_value[v]["seq"] for v in first)
    assert len({by_value[v]["txid"] for v in rest}) == 1
    txids = [by_value[first[0]]["txid"], by_value[rest[0]]["txid"]]
    txids += [by_value[v]["txid"] for v in (0, 100, 101)]
    assert len(set(txids)) == 5  # ones without an order, of another text, or behind: alone
    assert committed == sorted([*values, 0, 100, 101])


async def test_an_error_rolls_the_group_back_and_each_statement_runs_alone(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        calls = [db.fetchrow(_GROUPED, v, 0 if v == 2 else 1, order=v) for v in (1, 2, 3)]
        tasks = [asyncio.create_task(call) for call in calls]
        await eventually(lambda: holds(len(db.queued) == 3), what="all queued")
        await release()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        committed = await _committed(env)
    assert isinstance(results[1], asyncpg.DivisionByZeroError)
    ok = [r for r in results if isinstance(r, asyncpg.Record)]
    assert [r["v"] for r in ok] == [1, 3]
    assert ok[0]["txid"] != ok[1]["txid"]  # alone, each
    # the group's insert of 1 was rolled back: 1 and 3 are there once each, 2 not at all
    assert committed == [1, 3]


async def test_a_connection_lost_during_a_group_fails_its_every_caller(env: Env) -> None:
    """Whether the group committed is unknown then: no statement of it may run again."""
    sleepy = _GROUPED.replace("100 / $2::int", "pg_sleep($2::int)::text")
    async with _held_runner(env) as (db, release):
        tasks = [asyncio.create_task(db.fetchrow(sleepy, v, 30, order=v)) for v in (1, 2)]
        after = asyncio.create_task(db.fetchrow("SELECT pg_backend_pid()"))
        await eventually(lambda: holds(len(db.queued) == 3), what="all queued")
        await release()
        watcher = await asyncpg.connect(env.database_url)
        try:
            pids: list[int] = []

            async def sleeping() -> bool:
                pids[:] = (
                    await watcher.fetchval(
                        "SELECT array_agg(pid) FROM pg_stat_activity WHERE state = 'active'"
                        " AND query LIKE '%pg_sleep($2%' AND pid <> pg_backend_pid()"
                    )
                    or []
                )
                return len(pids) == 1

            await eventually(sleeping, what="the group to run")
            await watcher.execute("SELECT pg_terminate_backend($1)", pids[0])
        finally:
            await watcher.close()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        assert all(isinstance(r, asyncpg.PostgresError | OSError) for r in results), results
        row = await asyncio.wait_for(after, timeout=20)
        assert row is not None and row[0] != pids[0]  # the queue went on, on a new connection
        assert await _committed(env) == []
