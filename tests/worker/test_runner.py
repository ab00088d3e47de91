"""The job runner (``worker.jobs.JobRunner``) in this process, against the real database and
Redis, given the copies ARQ would deliver: when its handlers hold every pooled connection,
leases keep being renewed and a stop hands the job back (to the record and to ARQ) without
waiting for a connection; cut off from the database, a copy stops before its lease lapses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from redis.asyncio import Redis

from shared.db.database import Database
from shared.jobs.kinds import JobKind
from shared.queue import Queue
from tests.conftest import Env
from tests.waiting import eventually
from tests.worker_support import create_low_stock_jobs
from worker.context import WorkerContext
from worker.jobs import Handler, JobRun, JobRunner


async def leases(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime | None]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT id, lease_until FROM jobs WHERE id = ANY($1)", ids)
    return {r["id"]: r["lease_until"] for r in rows}


def deliver(runner: JobRunner, *job_ids: uuid.UUID) -> list[asyncio.Task[None]]:
    """What ARQ does with each job's first copy: call the runner, each in its own task."""
    return [asyncio.create_task(runner.run(job_id, 0)) for job_id in job_ids]


@asynccontextmanager
async def running_runner(
    env: Env, handler: Handler, release: asyncio.Event, *, pool_size: int, grace_seconds: int = 20
) -> AsyncIterator[tuple[JobRunner, Database]]:
    settings = env.settings(worker_concurrency=4, worker_shutdown_grace_seconds=grace_seconds)
    own_db = await Database.connect(env.database_url, pool_size=pool_size)
    state = WorkerContext(
        settings=settings,
        db=own_db,
        queue=Queue.from_url(env.redis_url, env.queue_name),
        http=httpx.AsyncClient(),
    )
    runner = JobRunner(state, {JobKind.webhook.value: handler}, database_url=env.database_url)
    runner.start()
    try:
        yield runner, own_db
    finally:
        release.set()
        await asyncio.wait_for(runner.stop(), 10)
        await state.http.aclose()
        await state.queue.close()
        await own_db.close()


def holding_handler(
    holding: asyncio.Event, release: asyncio.Event
) -> Callable[[JobRun], Awaitable[dict[str, Any]]]:
    """Job "HOLD" holds a pooled connection until released; any other job waits until it
    does, then returns at once."""

    async def handler(run: JobRun) -> dict[str, Any]:
        if run.job.payload["data"]["sku"] == "HOLD":
            async with run.state.db.acquire():
                holding.set()
                await release.wait()
        else:
            await holding.wait()
        return {"sku": run.job.payload["data"]["sku"]}

    return handler


async def test_leases_are_renewed_while_handlers_hold_every_pooled_connection(
    env: Env, db: Database
) -> None:
    holding, release = asyncio.Event(), asyncio.Event()
    async with running_runner(env, holding_handler(holding, release), release, pool_size=1) as (
        runner,
        _,
    ):
        ids = await create_low_stock_jobs(db, "HOLD", "QUICK")
        runs = deliver(runner, *ids)
        await asyncio.wait_for(holding.wait(), 10)

        async def claimed() -> bool:
            return all(v is not None for v in (await leases(db, ids)).values())

        await eventually(claimed, what="both jobs claimed")
        first = await leases(db, ids)

        # QUICK has returned; its completion waits for the connection HOLD holds. Both
        # leases must still be renewed, or another worker's reaper would run them again.
        async def renewed() -> bool:
            now = await leases(db, ids)
            return all(now[i] is not None and now[i] > first[i] for i in ids)  # type: ignore[operator]

        await eventually(renewed, timeout=10, what="both leases renewed")
        release.set()

        async def complete() -> bool:
            async with db.acquire() as conn:
                done = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE status = 'complete' AND attempts = 1"
                )
            return int(done) == 2

        await eventually(complete, what="both jobs complete")
        await asyncio.wait_for(asyncio.gather(*runs), 10)


async def test_a_stop_hands_the_job_back_without_waiting_for_a_pooled_connection(
    env: Env, db: Database
) -> None:
    holding, release = asyncio.Event(), asyncio.Event()
    async with running_runner(
        env, holding_handler(holding, release), release, pool_size=1, grace_seconds=1
    ) as (runner, _):
        (job_id,) = await create_low_stock_jobs(db, "HOLD")
        (run,) = deliver(runner, job_id)
        await asyncio.wait_for(holding.wait(), 10)
        # the grace period (1 s) ends, the handler is stopped and the job handed back, all
        # while HOLD's release never comes
        started = time.monotonic()
        await asyncio.wait_for(runner.stop(), 10)
        assert time.monotonic() - started < 4
        await asyncio.wait_for(run, 1)  # ARQ's copy is done with
    async with db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, attempts, generation FROM jobs WHERE id = $1", job_id
        )
    assert dict(row) == {"status": "queued", "attempts": 0, "generation": 1}
    # and handed to ARQ under the next generation's id
    redis = Redis.from_url(env.redis_url)
    try:
        assert await redis.exists(f"arq:job:{env.queue_name}:{job_id}:1")
    finally:
        await redis.aclose()


async def test_a_copy_that_cannot_renew_its_lease_stops_before_the_lease_lapses(
    env: Env, db: Database
) -> None:
    """Cut off from the database its leases are renewed on, a worker stops its copy of the
    job (FENCE_AFTER_SECONDS) before the lease can lapse and another worker's reaper hand the
    job on: never two copies running at once."""
    from shared.jobs.service import LEASE_SECONDS
    from worker.jobs import FENCE_AFTER_SECONDS

    started, stopped = asyncio.Event(), asyncio.Event()
    stopped_after: list[float] = []

    async def handler(run: JobRun) -> dict[str, Any]:
        started.set()
        t0 = time.monotonic()
        try:
            await asyncio.Event().wait()
        finally:
            stopped_after.append(time.monotonic() - t0)
            stopped.set()
        return {}

    settings = env.settings(worker_concurrency=2)
    own_db = await Database.connect(env.database_url, pool_size=2)
    state = WorkerContext(
        settings=settings,
        db=own_db,
        queue=Queue.from_url(env.redis_url, env.queue_name),
        http=httpx.AsyncClient(),
    )
    # the lease connection points where no database answers (the pool works)
    unreachable = "postgresql://postgres@127.0.0.1:1/none"
    runner = JobRunner(state, {JobKind.webhook.value: handler}, database_url=unreachable)
    runner.start()
    try:
        (job_id,) = await create_low_stock_jobs(db, "CUT-OFF")
        deliver(runner, job_id)
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(stopped.wait(), LEASE_SECONDS + 5)
        assert FENCE_AFTER_SECONDS - 1 <= stopped_after[0] < LEASE_SECONDS, stopped_after
        async with db.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, lease_until > now() AS leased FROM jobs WHERE id = $1", job_id
            )
        # stopped while its lease still held: no other worker could have had it yet
        assert (row["status"], row["leased"]) == ("in_progress", True), dict(row)
    finally:
        await asyncio.wait_for(runner.stop(), 10)
        await state.http.aclose()
        await state.queue.close()
        await own_db.close()
