"""``stockroom worker``: one worker process — the durable-job drain on PostgreSQL
(``worker.jobs``) next to an ARQ worker for the audit drain and the cron tasks."""

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
from worker.context import WorkerContext
from worker.handlers import HANDLERS
from worker.jobs import JobDrain

log = logging.getLogger("stockroom.worker")

# Idle pickup latency of an audit drain is about half the poll delay; an idle poll is one
# ZRANGEBYSCORE. (Durable jobs are woken by NOTIFY: see worker.jobs.)
POLL_DELAY_SECONDS = 0.01
HEARTBEAT_EVERY_SECONDS = 5
HEARTBEAT_TTL_SECONDS = 20

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


class WorkerProcess:
    """What lives as long as the process, started before (and independently of) the ARQ
    workers, which need Redis and which a Redis outage makes the runner replace: the database
    pool, the durable-job drain, the heartbeat."""

    def __init__(self, settings: Settings, *, burst: bool) -> None:
        self.settings = settings
        self.burst = burst
        self.state: WorkerContext | None = None
        self.drain: JobDrain | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        db = await Database.connect(
            settings.require_database_url(),
            pool_size=settings.db_pool_size,
            # no statement timeout here: a report's COPY may run for minutes
            session={"application_name": "stockroom-worker"},
        )
        queue = Queue.from_url(settings.require_redis_url(), settings.queue_name)
        self.state = WorkerContext(settings=settings, db=db, queue=queue, http=httpx.AsyncClient())
        self.drain = JobDrain(self.state, HANDLERS, database_url=settings.require_database_url())
        self.drain.start()
        self._heartbeat = asyncio.create_task(_heartbeat(self.state))
        log.info("worker started", extra={"queue": settings.queue_name, "id": self.state.worker_id})

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        """Each ARQ worker's start: its tasks find the process's resources in ``ctx``."""
        ctx["stockroom"] = self.state
        ctx["drain"] = self.drain

    def on_stop_requested(self) -> None:
        if self.drain is not None:
            self.drain.request_stop()

    async def stop(self) -> None:
        state, drain = self.state, self.drain
        if state is None or drain is None:
            return
        await drain.stop(drain=self.burst)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await self._heartbeat
        with contextlib.suppress(Exception):
            await state.queue.forget_worker(state.worker_id)
        await state.http.aclose()
        await state.queue.close()
        await state.db.close()
        log.info("worker stopped", extra={"jobs_done": state.jobs_done})


def build_runner(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True
) -> WorkerRunner:
    process = WorkerProcess(settings, burst=burst)
    return WorkerRunner(
        redis_url=settings.require_redis_url(),
        queue_name=settings.queue_name,
        tasks=[
            TaskSpec(TASK_DRAIN_AUDIT, tasks.drain_audit, timeout_seconds=60),
            TaskSpec(TASK_RUN_JOB, tasks.wake_job_drain, timeout_seconds=10),
        ],
        # A burst worker (tests, one-off drains) stops when the queue is empty; cron ticks
        # would keep it non-empty forever.
        crons=[] if burst else CRONS,
        max_jobs=settings.worker_concurrency,
        poll_delay=POLL_DELAY_SECONDS,
        on_process_start=process.start,
        on_process_stop=process.stop,
        on_startup=process.on_startup,
        on_stop_requested=process.on_stop_requested,
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
