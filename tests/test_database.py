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

from shared.db.database import Database, usable
from shared.db.group_commit import MAX_GROUP, GroupCommitter
from shared.errors import DatabaseUnavailable
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
            except DatabaseUnavailable as exc:
                assert isinstance(exc.__cause__, TimeoutError)
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


# --- GroupCommitter: a statement's calls committed in groups ------------------------------------

_GROUPED = """
WITH ins AS (INSERT INTO fetchrow_grouped (v) VALUES ($1) RETURNING v)
SELECT v, 100 / $2::int AS q, txid_current() AS txid, nextval('fetchrow_grouped_seq') AS seq,
       pg_backend_pid() AS pid
FROM ins
"""
_SLEEPY = _GROUPED.replace("100 / $2::int", "pg_sleep($2::float)::text")


@contextlib.asynccontextmanager
async def _held_runner(
    env: Env,
) -> AsyncIterator[tuple[Database, Callable[[], Awaitable[None]]]]:
    """A database of one connection, held, until the test calls ``release``, by a statement
    waiting on an advisory lock the test holds (calls queued meanwhile then go)."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    holder = await asyncpg.connect(env.database_url)
    await holder.execute(
        "CREATE TABLE fetchrow_grouped (v int NOT NULL);"
        " CREATE SEQUENCE fetchrow_grouped_seq; SELECT pg_advisory_lock(7007)"
    )
    blocking = GroupCommitter[int](db, "SELECT pg_advisory_xact_lock($1)")
    blocker = asyncio.create_task(blocking.commit((7007,), 0))
    try:
        await eventually(
            lambda: holds(len(blocking.runners) == 1 and not blocking.queued), what="blocked"
        )

        async def release() -> None:
            await holder.execute("SELECT pg_advisory_unlock(7007)")
            await blocker

        yield db, release
    finally:
        await blocking.close()
        await db.close()
        await holder.execute("DROP TABLE fetchrow_grouped; DROP SEQUENCE fetchrow_grouped_seq")
        await holder.close()


async def _committed(env: Env) -> list[int]:
    conn = await asyncpg.connect(env.database_url)
    try:
        return [r[0] for r in await conn.fetch("SELECT v FROM fetchrow_grouped ORDER BY v")]
    finally:
        await conn.close()


async def test_calls_queued_together_commit_together_in_their_order(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        grouped = GroupCommitter[int](db, _GROUPED)
        values = [5, *range(MAX_GROUP + 1, 7, -1), 3, 1, 4, 2, 6, 7]  # MAX_GROUP + 2 of them
        calls = [asyncio.create_task(grouped.commit((v, 1), v)) for v in values]
        await eventually(lambda: holds(len(grouped.queued) == len(values)), what="all queued")
        await release()
        rows = await asyncio.wait_for(asyncio.gather(*calls), 20)
        committed = await _committed(env)
        assert grouped.runners == set() and len(db.parked) == 1
    assert [row["v"] for row in rows] == values  # each caller its own row
    by_value = {row["v"]: row for row in rows}
    first, rest = values[:MAX_GROUP], values[MAX_GROUP:]
    # the first MAX_GROUP in one transaction, run in their order; the rest in a second
    assert len({by_value[v]["txid"] for v in first}) == 1
    assert [by_value[v]["seq"] for v in sorted(first)] == sorted(by_value[v]["seq"] for v in first)
    assert len({by_value[v]["txid"] for v in rest}) == 1
    assert by_value[first[0]]["txid"] != by_value[rest[0]]["txid"]
    assert len({row["pid"] for row in rows}) == 1  # back to back, on the one connection
    assert committed == sorted(values)


async def test_an_error_rolls_the_group_back_and_each_call_runs_alone(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        grouped = GroupCommitter[int](db, _GROUPED)
        calls = [grouped.commit((v, 0 if v == 2 else 1), v) for v in (1, 2, 3)]
        tasks = [asyncio.create_task(call) for call in calls]
        await eventually(lambda: holds(len(grouped.queued) == 3), what="all queued")
        await release()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        committed = await _committed(env)
    assert isinstance(results[1], asyncpg.DivisionByZeroError)  # its own error, as it is
    ok = [r for r in results if isinstance(r, asyncpg.Record)]
    assert [r["v"] for r in ok] == [1, 3]
    assert ok[0]["txid"] != ok[1]["txid"]  # alone, each
    # the group's insert of 1 was rolled back: 1 and 3 are there once each, 2 not at all
    assert committed == [1, 3]


async def _terminate_the_sleeper(env: Env) -> int:
    """Wait for a call of ``_SLEEPY`` to sleep, end its backend; its pid."""
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
        return pids[0]
    finally:
        await watcher.close()


async def test_a_connection_lost_during_a_group_fails_its_callers_and_the_queue_goes_on(
    env: Env,
) -> None:
    """Whether the group committed is unknown then: its callers get ``DatabaseUnavailable``
    and no call of it runs again; the runner lives, and sends the calls queued behind it on a
    new connection."""
    async with _held_runner(env) as (db, release):
        grouped = GroupCommitter[int](db, _SLEEPY)
        tasks = [asyncio.create_task(grouped.commit((v, 30), v)) for v in (1, 2)]
        await eventually(lambda: holds(len(grouped.queued) == 2), what="all queued")
        await release()
        await eventually(lambda: holds(not grouped.queued), what="the group to be sent")
        after = asyncio.create_task(grouped.commit((3, 0), 3))
        pid = await _terminate_the_sleeper(env)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        row = await asyncio.wait_for(after, timeout=20)
        assert row["pid"] != pid  # on a new connection
        assert await _committed(env) == [3]


async def test_an_acquire_caller_gets_the_connection_after_the_running_group(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        grouped = GroupCommitter[int](db, _SLEEPY)
        order: list[str] = []

        async def call(i: int) -> None:
            await grouped.commit((i, 0.05), i)
            order.append(f"s{i}")

        async def transaction() -> None:
            async with db.acquire() as conn:
                order.append("acquire")
                await conn.fetchval("SELECT 1")

        first = asyncio.create_task(call(0))
        await eventually(lambda: holds(len(grouped.queued) == 1), what="s0 to queue")
        await release()
        await eventually(lambda: holds(not grouped.queued), what="s0 to be sent")
        calls = [asyncio.create_task(call(i)) for i in (1, 2, 3)]
        await eventually(lambda: holds(len(grouped.queued) == 3), what="the rest to queue")
        waiter = asyncio.create_task(transaction())
        await asyncio.wait_for(asyncio.gather(first, *calls, waiter), timeout=20)
        assert order == ["s0", "acquire", "s1", "s2", "s3"]


async def test_a_caller_cancelled_while_queued_takes_its_call_away(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        grouped = GroupCommitter[int](db, _GROUPED)
        kept = asyncio.create_task(grouped.commit((1, 1), 1))
        cancelled = asyncio.create_task(grouped.commit((2, 1), 2))
        await eventually(lambda: holds(len(grouped.queued) == 2), what="both to queue")
        cancelled.cancel()
        await release()
        row = await asyncio.wait_for(kept, timeout=20)
        assert row["v"] == 1 and cancelled.cancelled()
        assert await _committed(env) == [1]


async def test_closing_cancels_the_calls_running_and_queued(env: Env) -> None:
    async with _held_runner(env) as (db, release):
        grouped = GroupCommitter[int](db, _SLEEPY)
        running = asyncio.create_task(grouped.commit((1, 30), 1))
        await eventually(lambda: holds(len(grouped.queued) == 1), what="queued")
        await release()
        await eventually(lambda: holds(not grouped.queued), what="running")
        queued = asyncio.create_task(grouped.commit((2, 0), 2))
        await eventually(lambda: holds(len(grouped.queued) == 1), what="queued")
        await asyncio.wait_for(grouped.close(), timeout=20)
        results = await asyncio.gather(running, queued, return_exceptions=True)
        assert [type(r) for r in results] == [asyncio.CancelledError, asyncio.CancelledError]


async def test_calls_one_after_the_other_each_find_a_runner(env: Env) -> None:
    """The caller of a call resumes before the loop runs the done callbacks of the runner
    that served it: a runner still counted then would leave the next call queued with no one
    to send it."""
    db = await Database.connect(env.database_url, pool_size=1, parking=True)
    grouped = GroupCommitter[int](db, "SELECT $1::int")
    try:

        async def back_to_back() -> list[int]:  # in one task: no loop turn in between
            rows = [await grouped.commit((i,), i) for i in range(3)]
            return [row[0] for row in rows]

        assert await asyncio.wait_for(back_to_back(), timeout=10) == [0, 1, 2]
    finally:
        await grouped.close()
        await db.close()


async def test_no_connection_fails_each_queued_call_and_the_committer_serves_again(
    env: Env,
) -> None:
    """No connection in time (here: the only one held): every call queued fails with
    ``DatabaseUnavailable`` (none ran), no runner is left behind, and later calls run."""
    db = await Database.connect(env.database_url, pool_size=1, checkout_timeout=0.3)
    grouped = GroupCommitter[int](db, "SELECT $1::int")
    try:
        async with db.acquire(timeout=5):
            calls = [asyncio.create_task(grouped.commit((i,), i)) for i in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        await eventually(lambda: holds(grouped.runners == set()), what="the runner to end")
        row = await asyncio.wait_for(grouped.commit((7,), 7), timeout=10)
        assert row[0] == 7
    finally:
        await grouped.close()
        await db.close()
