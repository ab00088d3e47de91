"""``stockroom worker``: one ARQ worker process."""

from __future__ import annotations

import logging
from typing import Any

from shared.db.database import Database
from shared.logs import configure_logging
from shared.queue import TASK_DRAIN_AUDIT, CronSpec, Queue, TaskSpec, WorkerRunner
from shared.settings import Settings
from worker import tasks
from worker.context import WorkerContext, context_of

log = logging.getLogger("stockroom.worker")

# Idle pickup latency is about half the poll delay; an idle poll is one ZRANGEBYSCORE.
POLL_DELAY_SECONDS = 0.01


CRONS = [
    CronSpec("relay_outbox", tasks.relay_outbox, every_seconds=1),
    CronSpec("purge_expired", tasks.purge_expired, every_seconds=30),
]


def build_runner(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True
) -> WorkerRunner:
    database_url = settings.require_database_url()
    redis_url = settings.require_redis_url()

    async def on_startup(ctx: dict[str, Any]) -> None:
        db = await Database.connect(database_url, pool_size=settings.db_pool_size)
        queue = Queue.from_url(redis_url, settings.queue_name)
        ctx["stockroom"] = WorkerContext(settings=settings, db=db, queue=queue)
        log.info("worker started", extra={"queue": settings.queue_name})

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "stockroom" in ctx:
            state = context_of(ctx)
            await state.queue.close()
            await state.db.close()
        log.info("worker stopped")

    return WorkerRunner(
        redis_url=redis_url,
        queue_name=settings.queue_name,
        tasks=[TaskSpec(TASK_DRAIN_AUDIT, tasks.drain_audit, timeout_seconds=60)],
        # A burst worker (tests, one-off drains) stops when the queue is empty; cron ticks
        # would keep it non-empty forever.
        crons=[] if burst else CRONS,
        max_jobs=settings.worker_concurrency,
        poll_delay=POLL_DELAY_SECONDS,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=handle_signals,
    )


def run(settings: Settings) -> int:
    configure_logging(settings)
    build_runner(settings).run()
    return 0
