"""The connection pool hands connections out in arrival order. asyncpg's own queue does not:
a connection released to a waiter can be taken by a task that asks before the waiter runs
(its ``asyncio.Queue.get`` then re-queues the waiter at the back), which under load made some
requests wait many times longer than the rest (restock p99 4-5x p50; with the fair checkout
1.4x)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from shared.db.database import Database, usable
from tests.conftest import Env
from tests.waiting import eventually

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
            await eventually(lambda: _true(len(queued) == 2), what="both waiters to queue")
            newcomer_ready.set()
        await asyncio.gather(*waiters, late)
    finally:
        await db.close()
    return order


async def _true(value: bool) -> bool:
    return value


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
        await eventually(lambda: _true(bool(pids)), what="the slow query's connection")
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
        await eventually(lambda: _true(not usable(parked)), what="the client to see it closed")
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
