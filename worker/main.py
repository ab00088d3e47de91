"""``stockroom worker``: one ARQ worker process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from prometheus_client import start_http_server

from shared.db.database import Database
from shared.logs import configure_logging
from shared.queue import (
    TASK_DRAIN_AUDIT,
    TASK_RUN_JOB,
    CronSpec,
    Queue,
    TaskSpec,
    WorkerRunner,
)
from shared.settings import Settings
from worker import tasks
from worker.context import WorkerContext, context_of
from worker.handlers import HANDLERS
from worker.jobs import run_job

log = logging.getLogger("stockroom.worker")

# Idle pickup latency is about half the poll delay; an idle poll is one ZRANGEBYSCORE.
POLL_DELAY_SECONDS = 0.01
HEARTBEAT_EVERY_SECONDS = 5
HEARTBEAT_TTL_SECONDS = 20
# ARQ's own timeout for one attempt. Recovery from a dead worker does not wait for it: our
# lease (shared.jobs.service.LEASE_SECONDS) brings a lost job back within seconds.
JOB_TIMEOUT_SECONDS = 3600

CRONS = [
    CronSpec("relay_outbox", tasks.relay_outbox, every_seconds=1),
    CronSpec("purge_expired", tasks.purge_expired, every_seconds=30),
]


async def _heartbeat(state: WorkerContext) -> None:
    while True:
        try:
            await state.queue.heartbeat(state.worker_id, state.describe(), HEARTBEAT_TTL_SECONDS)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)


def build_runner(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True
) -> WorkerRunner:
    database_url = settings.require_database_url()
    redis_url = settings.require_redis_url()

    async def on_startup(ctx: dict[str, Any]) -> None:
        if "stockroom" in ctx:  # a restart after a Redis outage whose shutdown was cut short
            await on_shutdown(ctx)
        db = await Database.connect(database_url, pool_size=settings.db_pool_size)
        queue = Queue.from_url(redis_url, settings.queue_name)
        state = WorkerContext(settings=settings, db=db, queue=queue, http=httpx.AsyncClient())
        ctx["stockroom"] = state
        ctx["handlers"] = HANDLERS
        ctx["heartbeat"] = asyncio.create_task(_heartbeat(state))
        log.info("worker started", extra={"queue": settings.queue_name, "id": state.worker_id})

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "stockroom" not in ctx:
            return
        state = context_of(ctx)
        ctx["heartbeat"].cancel()
        with contextlib.suppress(BaseException):
            await ctx["heartbeat"]
        with contextlib.suppress(Exception):
            await state.queue.forget_worker(state.worker_id)
        del ctx["stockroom"]
        await state.http.aclose()
        await state.queue.close()
        await state.db.close()
        log.info("worker stopped", extra={"jobs_done": state.jobs_done})

    return WorkerRunner(
        redis_url=redis_url,
        queue_name=settings.queue_name,
        tasks=[
            TaskSpec(TASK_DRAIN_AUDIT, tasks.drain_audit, timeout_seconds=60),
            TaskSpec(TASK_RUN_JOB, run_job, timeout_seconds=JOB_TIMEOUT_SECONDS),
        ],
        # A burst worker (tests, one-off drains) stops when the queue is empty; cron ticks
        # would keep it non-empty forever.
        crons=[] if burst else CRONS,
        max_jobs=settings.worker_concurrency,
        poll_delay=POLL_DELAY_SECONDS,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=handle_signals,
        shutdown_grace_seconds=settings.worker_shutdown_grace_seconds,
    )


def run(settings: Settings) -> int:
    configure_logging(settings)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")  # noqa: S104
    build_runner(settings).run()
    return 0
