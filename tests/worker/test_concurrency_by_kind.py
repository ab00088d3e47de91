"""Worker concurrency by kind, in a real worker process: reports run on an ARQ lane of their
own with two slots, so a worker runs at most two at once, and webhooks keep running on the
main queue's slots behind any number of long reports."""

from __future__ import annotations

import asyncpg
import httpx

from shared.db.database import Database
from tests.conftest import Env, count
from tests.waiting import eventually
from tests.worker.receiver import Receiver
from tests.worker_support import WorkerFactory, create_low_stock_jobs, wait_complete

RUNNING_REPORTS = "SELECT count(*) FROM jobs WHERE kind = 'report' AND status = 'in_progress'"


async def test_two_reports_at_once_and_webhooks_run_beside_them(
    env: Env,
    db: Database,
    client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    # Reports read stock_levels: while this lock is held, every report started stays running.
    holder = await asyncpg.connect(env.database_url)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("LOCK TABLE stock_levels IN ACCESS EXCLUSIVE MODE")
        for _ in range(4):
            r = await client.post(
                "/api/v1/reports",
                json={"kind": "valuation", "format": "csv", "params": {}},
                headers=admin,
            )
            assert r.status_code == 202, r.text
        start_worker()

        async def two_running() -> bool:
            return await count(db, RUNNING_REPORTS) == 2

        await eventually(two_running, timeout=30, what="two reports running")
        (webhook,) = await create_low_stock_jobs(db, "BESIDE-1")
        await wait_complete(db, webhook, 10, "a webhook beside two long reports")
        # still two running, the other two waiting in their lane
        assert await count(db, RUNNING_REPORTS) == 2
        queued = "SELECT count(*) FROM jobs WHERE kind = 'report' AND status = 'queued'"
        assert await count(db, queued) == 2
        await lock.rollback()
    finally:
        await holder.close()

    async def all_complete() -> bool:
        done = "SELECT count(*) FROM jobs WHERE kind = 'report' AND status = 'complete'"
        return await count(db, done) == 4

    await eventually(all_complete, timeout=60, what="the four reports complete")
    assert receiver.count == 1
