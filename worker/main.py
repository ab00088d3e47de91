"""``stockroom worker``: one worker process — ARQ workers for its lanes (the main queue: every
durable kind without a lane of its own, the audit drain and the crons; the reports' lane, with
few slots), and what lives as long as the process: the database pool, the job runner's leases
and reaper (``worker.jobs``), the heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from prometheus_client import start_http_server

from shared.db.database import Database
from shared.jobs.kinds import KINDS_WITH_OWN_LANE
from shared.logs import configure_logging
from shared.queue import (
    JOB_TIMEOUT_SECONDS,
    TASK_DRAIN_AUDIT,
    CronSpec,
    Lane,
    Queue,
    TaskSpec,
    WorkerRunner,
    lane_name,
)
from shared.reports.generate import report_slots_for
from shared.settings import Settings
from worker import tasks
from worker.context import WorkerContext
from worker.handlers import HANDLERS
from worker.jobs import OUTCOME_WAIT_AT_STOP_SECONDS, JobRunner

log = logging.getLogger("stockroom.worker")

# Idle pickup latency is about half the poll delay plus ARQ's start of a job (a few Redis round
# trips); an idle poll is one ZRANGEBYSCORE. Reports are long: their lane polls less often.
POLL_DELAY_SECONDS = 0.01
REPORT_POLL_DELAY_SECONDS = 0.05
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
    pool, the job runner (leases, reaper), the heartbeat."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: WorkerContext | None = None
        self.jobs: JobRunner | None = None
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
        # as many kept-alive connections as jobs at once: with httpx's default (20), a burst of
        # webhooks to one receiver opened a new connection for most deliveries
        slots = settings.worker_concurrency
        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
        )
        self.state = WorkerContext(settings=settings, db=db, queue=queue, http=http)
        self.jobs = JobRunner(self.state, HANDLERS, database_url=settings.require_database_url())
        self.jobs.start()
        self._heartbeat = asyncio.create_task(_heartbeat(self.state))
        log.info("worker started", extra={"queue": settings.queue_name, "id": self.state.worker_id})

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        """Each ARQ worker's start: its tasks find the process's resources in ``ctx``."""
        ctx["stockroom"] = self.state
        ctx["jobs"] = self.jobs

    def on_stop_requested(self) -> None:
        if self.jobs is not None:
            self.jobs.request_stop()

    async def stop(self) -> None:
        state, runner = self.state, self.jobs
        if state is None or runner is None:
            return
        await runner.stop()
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


def lanes(settings: Settings, *, burst: bool = False) -> list[Lane]:
    """The main queue (``WORKER_CONCURRENCY`` slots: every durable kind without a lane of its
    own, the audit drain, the crons) and a lane per kind in ``KINDS_WITH_OWN_LANE`` (reports:
    ``report_slots_for`` slots, so that at most that many run at once per worker and never
    take the main queue's slots)."""
    queue = settings.queue_name

    def run_job(kind: str) -> TaskSpec:
        return TaskSpec(kind, tasks.run_job, timeout_seconds=JOB_TIMEOUT_SECONDS)

    main = Lane(
        queue_name=queue,
        tasks=[TaskSpec(TASK_DRAIN_AUDIT, tasks.drain_audit, timeout_seconds=60)]
        + [run_job(kind) for kind in HANDLERS if kind not in KINDS_WITH_OWN_LANE],
        max_jobs=settings.worker_concurrency,
        poll_delay=POLL_DELAY_SECONDS,
        # A burst worker (tests, one-off drains) stops when the queue is empty; cron ticks
        # would keep it non-empty forever.
        crons=[] if burst else CRONS,
    )
    own = [
        Lane(
            queue_name=lane_name(queue, kind),
            tasks=[run_job(kind)],
            max_jobs=report_slots_for(settings.db_pool_size),
            poll_delay=REPORT_POLL_DELAY_SECONDS,
        )
        for kind in sorted(KINDS_WITH_OWN_LANE)
    ]
    return [main, *own]


def build_runner(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True
) -> WorkerRunner:
    process = WorkerProcess(settings)
    grace = settings.worker_shutdown_grace_seconds
    return WorkerRunner(
        redis_url=settings.require_redis_url(),
        lanes=lanes(settings, burst=burst),
        on_process_start=process.start,
        on_process_stop=process.stop,
        on_startup=process.on_startup,
        on_stop_requested=process.on_stop_requested,
        burst=burst,
        handle_signals=handle_signals,
        # ARQ's wait outlasts ours: the runner stops and hands back the durable jobs first
        job_completion_wait=grace + int(OUTCOME_WAIT_AT_STOP_SECONDS) + 5,
    )


def run(settings: Settings) -> int:
    configure_logging(settings)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")  # noqa: S104
    build_runner(settings).run()
    return 0
