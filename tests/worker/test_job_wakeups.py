"""The job drain's wake-up listener (``shared.jobs.wakeups``) across a restart of a private
PostgreSQL: it connects again on its own and hears notifications again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncpg

from shared.embedded import EmbeddedPostgres, free_port
from shared.jobs.outbox import JOBS_CHANNEL
from shared.jobs.wakeups import listen_for_jobs
from tests.waiting import eventually


async def test_the_listener_hears_notifications_again_after_a_postgresql_restart(
    tmp_path: Path,
) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    await asyncio.to_thread(server.start)
    wakes = 0

    def on_wake() -> None:
        nonlocal wakes
        wakes += 1

    async def woken_after(before: int) -> None:
        async def more() -> bool:
            return wakes > before

        await eventually(more, timeout=15, what="a wake-up")

    async def notify() -> None:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute(f"NOTIFY {JOBS_CHANNEL}")
        finally:
            await conn.close()

    listener = asyncio.create_task(listen_for_jobs(server.url, on_wake))
    try:
        await woken_after(0)  # connected and listening: it wakes the drain once
        seen = wakes
        await notify()
        await woken_after(seen)

        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        seen = wakes
        await woken_after(seen)  # connected again (anything notified meanwhile may be due)
        seen = wakes
        await notify()
        await woken_after(seen)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await asyncio.to_thread(server.stop)
