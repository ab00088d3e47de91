"""``run_job``: one attempt of a durable job, under a lease, with our retry policy.

- claim: the job's row goes ``in_progress`` under a lease for this worker (a stale or
  duplicate delivery claims nothing and returns);
- while the handler runs, the lease is renewed every second; the renewal also reads
  ``cancel_requested`` (a cancel stops the handler within about a second) and notices a lost
  lease (the job was reclaimed: this copy stops);
- outcome: complete; transient failure → back to the queue after exponential backoff with
  jitter, until ``max_attempts``; permanent failure → failed at once, with a readable error;
  worker shutdown → handed back without counting the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.jobs import service as jobs
from shared.jobs.outbox import mark_enqueued
from shared.jobs.retry import describe, is_transient
from shared.logs import request_id_var
from shared.queue import retry_exception
from worker.context import WorkerContext, context_of

log = logging.getLogger("stockroom.worker")

RENEW_EVERY_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 0.5


@dataclass(slots=True)
class JobRun:
    """What a handler gets: the claimed job and the worker's resources."""

    job: jobs.ClaimedJob
    state: WorkerContext
    _last_progress: float = 0.0
    _stop_reason: str | None = field(default=None)

    async def progress(self, percent: int, *, force: bool = False) -> None:
        """Record progress (at most twice a second unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_SECONDS:
            return
        self._last_progress = now
        async with self.state.db.pool.acquire() as conn:
            await jobs.set_progress(conn, self.job.id, self.state.worker_id, percent)


Handler = Callable[[JobRun], Coroutine[Any, Any, dict[str, Any]]]


async def _keep_lease(run: JobRun, task: asyncio.Task[dict[str, Any]]) -> None:
    state = run.state
    while not task.done():
        await asyncio.sleep(RENEW_EVERY_SECONDS)
        try:
            async with state.db.pool.acquire() as conn:
                cancel = await jobs.renew_lease(conn, run.job.id, state.worker_id)
        except Exception as exc:  # the lease outlives a short database blip
            log.warning("lease renewal failed: %s", exc)
            continue
        if cancel is None or cancel:
            run._stop_reason = "lost" if cancel is None else "cancelled"
            task.cancel()
            return


async def run_job(ctx: dict[str, Any], job_id: str, generation: int) -> str:
    state = context_of(ctx)
    handlers: dict[str, Handler] = ctx["handlers"]
    try:
        async with state.db.pool.acquire() as conn:
            claimed = await jobs.claim(conn, uuid.UUID(job_id), generation, state.worker_id)
    except Exception as exc:
        if is_transient(exc):  # the database is away: let the queue try this delivery later
            raise retry_exception(5.0) from exc
        raise
    if claimed is None:
        return "skipped"
    token = request_id_var.set(claimed.request_id)
    state.jobs_running += 1
    started = time.monotonic()
    run = JobRun(job=claimed, state=state)
    handler = handlers.get(claimed.kind) or _unknown_kind
    task = asyncio.create_task(handler(run))
    try:
        lease = asyncio.create_task(_keep_lease(run, task))
        try:
            result = await asyncio.shield(task)
        finally:
            lease.cancel()
        await _finish(
            state, claimed, lambda conn: jobs.complete(conn, claimed.id, state.worker_id, result)
        )
        metrics.JOBS_COMPLETED.labels(claimed.kind).inc()
        log.info(
            "job complete",
            extra={"job_id": str(claimed.id), "kind": claimed.kind, "attempt": claimed.attempt},
        )
        return "complete"
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # ARQ is shutting the worker down: stop the handler, hand the job back.
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await _hand_back(state, claimed)
            raise
        if run._stop_reason == "cancelled":
            await _finish(
                state, claimed, lambda conn: jobs.mark_cancelled(conn, claimed.id, state.worker_id)
            )
            return "cancelled"
        return "lost-lease"
    except Exception as exc:
        await _after_failure(state, claimed, exc)
        return "failed"
    finally:
        metrics.JOB_DURATION.labels(claimed.kind).observe(time.monotonic() - started)
        state.jobs_running -= 1
        state.jobs_done += 1
        request_id_var.reset(token)


async def _unknown_kind(run: JobRun) -> dict[str, Any]:
    raise LookupError(f"this worker has no handler for job kind {run.job.kind!r}")


async def _finish(
    state: WorkerContext, job: jobs.ClaimedJob, write: Callable[[Any], Awaitable[Any]]
) -> None:
    async with state.db.pool.acquire() as conn:
        await write(conn)


async def _after_failure(state: WorkerContext, job: jobs.ClaimedJob, exc: Exception) -> None:
    error = describe(exc)
    if is_transient(exc) and job.attempt < job.max_attempts:
        delay = jobs.backoff_seconds(job.attempt)
        async with state.db.pool.acquire() as conn:
            generation = await jobs.schedule_retry(conn, job.id, state.worker_id, error, delay)
        metrics.JOBS_RETRIED.labels(job.kind).inc()
        log.warning(
            "job attempt failed; retrying",
            extra={
                "job_id": str(job.id),
                "attempt": job.attempt,
                "delay": round(delay, 2),
                "error": error,
            },
        )
        if generation is not None:
            await _enqueue(state, job.id, generation, delay)
        return
    if is_transient(exc):
        error = f"gave up after {job.attempt} attempts: {error}"
    async with state.db.pool.acquire() as conn:
        await jobs.fail(conn, job.id, state.worker_id, error)
    metrics.JOBS_FAILED.labels(job.kind).inc()
    log.error("job failed", extra={"job_id": str(job.id), "attempt": job.attempt, "error": error})


async def _hand_back(state: WorkerContext, job: jobs.ClaimedJob) -> None:
    try:
        async with state.db.pool.acquire() as conn:
            generation = await jobs.hand_back(conn, job.id, state.worker_id)
    except Exception as exc:  # the lease lapses and the reaper returns the job
        log.warning("could not hand back job %s: %s", job.id, exc)
        return
    if generation is not None:
        await _enqueue(state, job.id, generation, 0)


async def _enqueue(state: WorkerContext, job_id: uuid.UUID, generation: int, delay: float) -> None:
    """Best effort: what is not handed over here, the relay sends."""
    try:
        if await state.queue.enqueue_run_job(job_id, generation, delay):
            async with state.db.pool.acquire() as conn:
                await mark_enqueued(conn, [job_id])
    except Exception as exc:
        log.warning("could not enqueue job %s: %s", job_id, exc)
