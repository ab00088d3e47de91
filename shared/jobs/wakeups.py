"""Wake-ups for the workers' job drain: a PostgreSQL connection that ``LISTEN``s on
``JOBS_CHANNEL`` (every INSERT of a durable job notifies it, at commit).

A notification is only a hint: the drain also polls, so a notification lost while the
connection is down costs latency, never a job. The connection is its own, outside the pool
(pooled connections skip the reset that would ``UNLISTEN``), and it is re-opened when lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from shared.db.connection import SERVER_SETTINGS
from shared.db.urls import driver_url
from shared.jobs.outbox import JOBS_CHANNEL

log = logging.getLogger("stockroom.worker")

RECONNECT_DELAY_SECONDS = 1.0
# A connection that died without a word (a silent network failure) is noticed by this ping.
PING_EVERY_SECONDS = 10.0


async def listen_for_jobs(database_url: str, on_wake: Callable[[], None]) -> None:
    """Call ``on_wake`` on each notification, and after each (re)connect (anything notified
    while away may be due). Runs until cancelled."""
    while True:
        try:
            conn = await asyncpg.connect(
                driver_url(database_url), server_settings=SERVER_SETTINGS, timeout=5
            )
        except Exception as exc:
            log.warning("job wake-up listener cannot connect: %s", exc)
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)
            continue
        lost = asyncio.Event()

        def notified(*_: Any) -> None:
            on_wake()

        def terminated(_conn: Any, lost: asyncio.Event = lost) -> None:
            lost.set()

        try:
            conn.add_termination_listener(terminated)
            await conn.add_listener(JOBS_CHANNEL, notified)
            on_wake()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), PING_EVERY_SECONDS)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=5)
        except Exception as exc:
            log.warning("job wake-up listener lost its connection: %s", exc)
        finally:
            conn.terminate()
        await asyncio.sleep(RECONNECT_DELAY_SECONDS)
