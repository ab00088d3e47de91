"""Durable jobs in the worker: ARQ delivers each job's copy (``<queue>:<job id>:<generation>``)
to the ARQ function of its kind, which calls ``JobRunner.run``; the record in PostgreSQL stays
the truth, and this module keeps ARQ's at-least-once delivery from ever running a job twice.

- claim: the delivered copy is claimed under a lease, with generation fencing (claims that
  arrive together go in one statement, ``jobs.claim``); a duplicate delivery, a stale copy of
  an earlier generation, a cancelled job or one a second worker took gets nothing and returns;
- lease: one statement a second renews the leases of all this process's jobs whose outcome
  is not written yet, and reads ``cancel_requested`` (a cancel stops the handler within about
  a second); a job no longer ours (reclaimed after a lapse) is stopped. It runs on a connection
  of its own, outside the pool: handlers that hold every pooled connection (a slow webhook
  receiver, reports) must not make a live worker's leases lapse and its jobs run twice. The
  same loop is the reaper: jobs of workers that stopped renewing go back to the queue under a
  new generation and are handed to ARQ again at once, their stale ARQ copies removed;
- outcome: complete (completions that arrive while one statement is in flight go together in
  the next); transient failure → the next generation, handed to ARQ deferred by full-jitter
  backoff, until ``max_attempts``; permanent failure → failed at once, with a readable error;
  worker shutdown → what has not finished within the grace period is handed back (and to
  ARQ) without counting the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import asyncpg

from shared import metrics
from shared.db.connection import SERVER_SETTINGS
from shared.db.urls import driver_url
from shared.jobs import service as jobs
from shared.jobs.batching import Batched, retrying
from shared.jobs.retry import describe, is_transient
from shared.jobs.schemas import QueuedJob
from shared.logs import request_id_var
from worker.context import WorkerContext

log = logging.getLogger("stockroom.worker")

RENEW_EVERY_SECONDS = 1.0
# A copy whose lease has not been extended for this long stops itself (the database is away,
# or this worker is cut off from it), before the lease (jobs.LEASE_SECONDS) can lapse and
# another worker's reaper hand the job to someone else.
FENCE_AFTER_SECONDS = jobs.LEASE_SECONDS - 4
PROGRESS_EVERY_SECONDS = 0.5

StopReason = Literal["cancelled", "lost", "shutdown"]
_T = TypeVar("_T")


@dataclass(slots=True)
class JobRun:
    """What a handler gets: the claimed job and the worker's resources."""

    job: jobs.ClaimedJob
    state: WorkerContext
    _last_progress: float = 0.0
    stop_reason: StopReason | None = None
    finishing: bool = False  # the handler has returned or raised: nothing left to stop
    renewed_at: float = field(default_factory=time.monotonic)  # the lease was last extended

    async def progress(self, percent: int, *, force: bool = False) -> None:
        """Record progress (at most twice a second unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_SECONDS:
            return
        self._last_progress = now
        async with self.state.db.acquire() as conn:
            await jobs.set_progress(conn, self.job.lease, self.state.worker_id, percent)


Handler = Callable[[JobRun], Coroutine[Any, Any, dict[str, Any]]]


async def _unknown_kind(run: JobRun) -> dict[str, Any]:
    raise LookupError(f"this worker has no handler for job kind {run.job.kind!r}")


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the lease keeper stopped: %r", task.exception())


OUTCOME_WAIT_AT_STOP_SECONDS = 15.0


class JobRunner:
    """One per worker process: claims, runs and finishes the durable jobs ARQ delivers, and
    keeps their leases (see the module)."""

    def __init__(
        self, state: WorkerContext, handlers: dict[str, Handler], *, database_url: str
    ) -> None:
        self._state = state
        self._handlers = handlers
        self._claims: Batched[jobs.Lease, jobs.ClaimedJob | None] = Batched(self._claim)
        self._completions: Batched[tuple[jobs.Lease, dict[str, Any]], bool] = Batched(
            self._complete_batch
        )
        self._runs: dict[uuid.UUID, tuple[JobRun, asyncio.Task[None]]] = {}
        self._stopping = False
        self._grace: asyncio.Task[None] | None = None
        self._lease_conn = _OwnConnection(database_url)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lease_loop())]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    def request_stop(self) -> None:
        """Take no more jobs; running ones have ``WORKER_SHUTDOWN_GRACE_SECONDS`` from now,
        then are stopped and handed back."""
        if self._grace is None:
            self._stopping = True
            grace = self._state.settings.worker_shutdown_grace_seconds
            self._grace = asyncio.create_task(self._hand_back_after(grace))
            self._grace.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop: running jobs get the rest of the grace period, then are stopped and handed
        back (after the ARQ workers have stopped, nothing runs any more, usually); then the
        lease keeper stops."""
        self.request_stop()
        assert self._grace is not None
        await asyncio.wait([self._grace])
        await self._stop_all_runs()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._lease_conn.close()

    async def _hand_back_after(self, grace: float) -> None:
        running = [task for _, task in self._runs.values()]
        if running:
            await asyncio.wait(running, timeout=grace)
        await self._stop_all_runs()

    async def _stop_all_runs(self) -> None:
        for run, _ in list(self._runs.values()):
            self._stop_run(run, "shutdown")
        if self._runs:
            # outcomes and hand-backs still being written get a while more (their writes are
            # retried and time-limited); past it they are dropped: their leases lapse, the
            # reaper returns the jobs
            tasks = [task for _, task in self._runs.values()]
            _, late = await asyncio.wait(tasks, timeout=OUTCOME_WAIT_AT_STOP_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # --- one delivered copy ------------------------------------------------------------------

    async def run(self, job_id: uuid.UUID, generation: int) -> None:
        """ARQ delivered this copy: claim it and, if it is ours to run, run it to its outcome.
        A copy delivered while the process stops is not claimed (the relay hands the job to
        another worker)."""
        if self._stopping:
            return
        job = await self._claims.submit((job_id, generation))
        if job is None:
            log.debug(
                "delivered copy not claimed (stale, cancelled or taken)",
                extra={"job_id": str(job_id), "generation": generation},
            )
            return
        old = self._runs.get(job.id)
        if old is not None:  # our own earlier copy, whose lease lapsed: its writes are fenced
            self._stop_run(old[0], "lost")
        run = JobRun(job=job, state=self._state)
        task = asyncio.create_task(self._run(run))
        self._runs[job.id] = (run, task)
        task.add_done_callback(lambda _: self._finished(job.id, task))
        await task

    async def _claim(self, leases: list[jobs.Lease]) -> list[jobs.ClaimedJob | None]:
        async with self._state.db.acquire() as conn:
            claimed = {j.lease: j for j in await jobs.claim(conn, self._state.worker_id, leases)}
        return [claimed.get(lease) for lease in leases]

    def _finished(self, job_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        entry = self._runs.get(job_id)
        if entry is not None and entry[1] is task:  # not a later claim of the same job
            del self._runs[job_id]

    async def _run(self, run: JobRun) -> None:
        state, job = self._state, run.job
        token = request_id_var.set(job.request_id)
        state.jobs_running += 1
        started = time.monotonic()
        handler = self._handlers.get(job.kind) or _unknown_kind
        try:
            try:
                result = await handler(run)
            finally:
                run.finishing = True
            await self._complete(job, result)
        except asyncio.CancelledError:
            if run.stop_reason is None:
                raise
            await self._stopped(run)
        except Exception as exc:
            await self._after_failure(job, exc)
        finally:
            metrics.JOB_DURATION.labels(job.kind).observe(time.monotonic() - started)
            state.jobs_running -= 1
            state.jobs_done += 1
            request_id_var.reset(token)

    async def _complete_batch(self, batch: list[tuple[jobs.Lease, dict[str, Any]]]) -> list[bool]:
        async with self._state.db.acquire() as conn:
            completed = await jobs.complete_many(conn, self._state.worker_id, batch)
        return [job_id in completed for (job_id, _), _ in batch]

    async def _complete(self, job: jobs.ClaimedJob, result: dict[str, Any]) -> None:
        extra = {"job_id": str(job.id), "kind": job.kind, "attempt": job.attempt}
        try:
            completed = await self._completions.submit((job.lease, result))
        except Exception as exc:  # the lease lapses and the job runs again
            log.error("could not record a completed job: %s", exc, extra=extra)
            return
        if completed:
            metrics.JOBS_COMPLETED.labels(job.kind).inc()
            log.info("job complete", extra=extra)
        else:
            log.warning("job finished after its lease was lost; not recorded", extra=extra)

    async def _stopped(self, run: JobRun) -> None:
        job = run.job
        if run.stop_reason == "cancelled":
            await self._write(jobs.mark_cancelled, job.lease, self._state.worker_id)
            log.info("job cancelled", extra={"job_id": str(job.id)})
        elif run.stop_reason == "lost":
            log.warning("job lease lost; this copy stopped", extra={"job_id": str(job.id)})
        else:
            back = await self._write(jobs.hand_back, self._state.worker_id, [job.lease])
            if back:
                log.info("job handed back at shutdown", extra={"job_id": str(job.id)})
                await self._hand_over(back)

    async def _after_failure(self, job: jobs.ClaimedJob, exc: Exception) -> None:
        state = self._state
        error = describe(exc)
        extra: dict[str, Any] = {"job_id": str(job.id), "attempt": job.attempt, "error": error}
        if is_transient(exc) and job.attempt < job.max_attempts:
            delay = jobs.backoff_seconds(job.attempt)
            again = await self._write(jobs.schedule_retry, job.lease, state.worker_id, error, delay)
            if again is None:  # cancelled meanwhile, or the job is no longer this worker's
                log.info("job attempt failed; not requeued", extra=extra)
                return
            metrics.JOBS_RETRIED.labels(job.kind).inc()
            log.warning("job attempt failed; retrying", extra={**extra, "delay": round(delay, 2)})
            await self._hand_over([again])
            return
        if is_transient(exc):
            error = f"gave up after {job.attempt} attempts: {error}"
        await self._write(jobs.fail, job.lease, state.worker_id, error)
        metrics.JOBS_FAILED.labels(job.kind).inc()
        log.error("job failed", extra={**extra, "error": error})

    async def _write(self, statement: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """One outcome write, returning what the statement returns (``None`` when it could
        not be written: the database is away, the lease lapses and the reaper returns the
        job)."""

        async def write() -> Any:
            async with self._state.db.acquire() as conn:
                return await statement(conn, *args)

        try:
            return await retrying(write)
        except Exception as exc:
            log.warning("could not record a job's outcome: %s", exc)
            return None

    async def _hand_over(
        self, copies: list[QueuedJob], stale: list[QueuedJob] | None = None
    ) -> None:
        """The next generation of these jobs to ARQ (best effort: the relay delivers what
        fails here), their stale copies removed from ARQ first."""
        try:
            if stale:
                await self._state.queue.forget(stale)
            await self._state.queue.hand_over(copies)
        except Exception as exc:
            log.warning("handing jobs to ARQ failed; the relay will: %s", exc)

    # --- leases ------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Each second, on the runner's own connection: renew this process's leases, stop the
        copies that are no longer ours (or cancelled, or whose lease could not be renewed
        for too long), then return the jobs of workers that stopped renewing theirs."""
        while True:
            await asyncio.sleep(RENEW_EVERY_SECONDS)
            # Every job whose outcome is not written yet: a finished job's completion may be
            # waiting for a pooled connection, and its lease must outlast the wait.
            held = [run for run, _ in self._runs.values()]
            if held:
                await self._renew(held)
            try:
                reclaimed = await self._lease_conn.run(jobs.reclaim_expired)
            except Exception as exc:
                log.warning("reclaiming expired leases failed: %s", exc)
                continue
            if reclaimed:
                log.warning("reclaimed jobs from lost workers", extra={"count": len(reclaimed)})
                stale = [QueuedJob(j.id, j.generation - 1, j.kind) for j in reclaimed]
                await self._hand_over(reclaimed, stale)

    async def _renew(self, held: list[JobRun]) -> None:
        asked = time.monotonic()
        try:
            renewed = await self._lease_conn.run(
                jobs.renew_leases, self._state.worker_id, [run.job.lease for run in held]
            )
        except Exception as exc:  # the lease outlives a short database blip...
            log.warning("lease renewal failed: %s", exc)
            for run in held:  # ...but not a long one: stop before the reaper can requeue
                if not run.finishing and asked - run.renewed_at > FENCE_AFTER_SECONDS:
                    self._stop_run(run, "lost")
            return
        for run in held:
            cancel = renewed.get(run.job.id)
            if cancel is not None:
                run.renewed_at = asked
            if not run.finishing and (cancel is None or cancel):
                self._stop_run(run, "lost" if cancel is None else "cancelled")

    def _stop_run(self, run: JobRun, reason: StopReason) -> None:
        entry = self._runs.get(run.job.id)
        if entry is not None and entry[0] is run and run.stop_reason is None and not run.finishing:
            run.stop_reason = reason
            entry[1].cancel()


class _OwnConnection:
    """A connection of the drain's own, outside the pool (see the module: leases), opened on
    first use and opened again after a failure."""

    CONNECT_TIMEOUT_SECONDS = 5.0
    STATEMENT_TIMEOUT_SECONDS = 5.0

    def __init__(self, database_url: str) -> None:
        self._url = driver_url(database_url)
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None

    async def run(self, statement: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._url, server_settings=SERVER_SETTINGS, timeout=self.CONNECT_TIMEOUT_SECONDS
            )
        try:
            async with asyncio.timeout(self.STATEMENT_TIMEOUT_SECONDS):
                return await statement(self._conn, *args)
        except BaseException:
            self._conn.terminate()  # in an unknown state: the next call opens a new one
            self._conn = None
            raise

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), self.CONNECT_TIMEOUT_SECONDS)
            self._conn = None
