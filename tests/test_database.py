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

from shared.db.database import Database
from tests.conftest import Env
from tests.waiting import eventually

Acquire = Callable[[Database], AbstractAsyncContextManager[Any]]


async def _arrival_order(env: Env, acquire: Acquire) -> list[str]:
    """Two tasks queue for the only connection; as its holder lets go, a third task that
    became ready meanwhile asks for it: who gets it, in which order?"""
    db = await Database.connect(env.database_url, pool_size=1)
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
