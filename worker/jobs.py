"""Durable jobs: each worker process drains them from PostgreSQL, under leases, with our retry
policy. Redis plays no part: the ``jobs`` rows are the queue.

- claim: one statement takes as many due jobs as there are free slots (``WORKER_CONCURRENCY``
  at most running), each under a lease, counting an attempt (``jobs.claim_due``);
- wake-ups: the ``NOTIFY`` sent by each new job's INSERT at commit (``shared.jobs.wakeups``),
  a poll every ``POLL_EVERY_SECONDS``, this worker's own delayed retries coming due, and a
  finished job while more may be due. A lost wake-up costs latency, never a job;
- lease: one statement a second renews the leases of all this process's jobs whose outcome
  is not written yet, and reads ``cancel_requested`` (a cancel stops the handler within about
  a second); a job no longer ours (reclaimed after a lapse) is stopped. It runs on a connection
  of its own, outside the pool: handlers that hold every pooled connection (a slow webhook
  receiver, reports) must not make a live worker's leases lapse and its jobs run twice;
- outcome: complete (completions that arrive while one statement is in flight go together in
  the next); transient failure → due again after exponential backoff with jitter, until
  ``max_attempts``; permanent failure → failed at once, with a readable error; worker
  shutdown → what has not finished within the grace period is handed back without counting
  the attempt.
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
from shared.jobs.retry import describe, is_transient
from shared.jobs.wakeups import listen_for_jobs
from shared.logs import request_id_var
from worker.context import WorkerContext

log = logging.getLogger("stockroom.worker")

RENEW_EVERY_SECONDS = 1.0
# A copy whose lease has not been extended for this long stops itself (the database is away,
# or this worker is cut off from it), before the lease (jobs.LEASE_SECONDS) can lapse and
# another worker's reaper hand the job to someone else.
FENCE_AFTER_SECONDS = jobs.LEASE_SECONDS - 4
PROGRESS_EVERY_SECONDS = 0.5
POLL_EVERY_SECONDS = 0.5
CLAIM_BATCH = 100
CLAIM_RETRY_SECONDS = 1.0

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
        log.error("the job drain stopped: %r", task.exception())


class _Completions:
    """Job completions, coalesced: those submitted while one statement is in flight (or in
    the same event-loop tick) are written together by the next one."""

    def __init__(self, state: WorkerContext) -> None:
        self._state = state
        self._pending: list[tuple[jobs.Lease, dict[str, Any], asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def complete(self, lease: jobs.Lease, result: dict[str, Any]) -> bool:
        """``True`` when the job is now complete; ``False`` when it was no longer ours."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((lease, result, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await done

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)  # the jobs finishing in this tick join the first statement
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    completed = await self._complete(batch)
                except Exception:
                    # one bad result (or a blip) must not fail its neighbours: one at a time
                    for entry in batch:
                        await self._complete_one(entry)
                    continue
                for (job_id, _), _, done in batch:
                    if not done.done():
                        done.set_result(job_id in completed)
        finally:
            self._writer = None

    async def _complete(
        self, batch: list[tuple[jobs.Lease, dict[str, Any], asyncio.Future[bool]]]
    ) -> set[uuid.UUID]:
        async with self._state.db.acquire() as conn:
            return await jobs.complete_many(
                conn, self._state.worker_id, [(lease, r) for lease, r, _ in batch]
            )

    async def _complete_one(
        self, entry: tuple[jobs.Lease, dict[str, Any], asyncio.Future[bool]]
    ) -> None:
        lease, _, done = entry
        try:
            completed = await _retrying(lambda: self._complete([entry]))
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(lease[0] in completed)


# Outcome writes are retried for a while: the lease is renewed while an outcome is pending, so
# a database blip need not make a finished job run again.
OUTCOME_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
OUTCOME_WAIT_AT_STOP_SECONDS = 15.0


async def _retrying(write: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    for delay in OUTCOME_RETRY_DELAYS:
        try:
            return await write()
        except Exception as exc:
            log.warning("writing a job's outcome failed; retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
    return await write()


class JobDrain:
    """One per worker process: claims, runs and finishes durable jobs (see the module)."""

    def __init__(
        self, state: WorkerContext, handlers: dict[str, Handler], *, database_url: str
    ) -> None:
        self._state = state
        self._handlers = handlers
        self._database_url = database_url
        self._concurrency = state.settings.worker_concurrency
        self._completions = _Completions(state)
        self._runs: dict[uuid.UUID, tuple[JobRun, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._more_due = False
        self._retry_at: float | None = None
        self._stopping = False
        self._deadline: float | None = None
        self._claiming = False  # a claim statement is in flight or its jobs not started yet
        self._lease_conn = _OwnConnection(database_url)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop()),
            asyncio.create_task(self._lease_loop()),
            asyncio.create_task(listen_for_jobs(self._database_url, self.wake)),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        """Take no more jobs; running ones have ``WORKER_SHUTDOWN_GRACE_SECONDS`` from now."""
        if not self._stopping:
            self._stopping = True
            self._deadline = time.monotonic() + self._state.settings.worker_shutdown_grace_seconds
            self._wake.set()

    async def stop(self, *, drain: bool = False) -> None:
        """Stop (after running every due job first, with ``drain``): wait for running jobs
        until the grace period ends, then stop their handlers and hand the jobs back."""
        if drain and not self._stopping:
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()
        self.request_stop()
        assert self._deadline is not None
        if self._tasks:
            claim_loop = self._tasks[0]
            if not self._claiming:  # asleep, or waiting for a pooled connection
                claim_loop.cancel()
            # a claim in flight starts its jobs first; asyncio.wait, not a suppressed await,
            # so that a cancellation of stop() itself is not swallowed
            await asyncio.wait([claim_loop])
        running = [task for _, task in self._runs.values()]
        if running:
            await asyncio.wait(running, timeout=max(0.0, self._deadline - time.monotonic()))
        shutdown = [run for run, task in self._runs.values() if not run.finishing]
        for run in shutdown:
            run.stop_reason = "shutdown"
            self._runs[run.job.id][1].cancel()
        if self._runs:
            # outcomes still being written get a while more (their writes are retried and
            # time-limited); past it they are dropped: their leases lapse, the reaper returns
            # the jobs
            tasks = [task for _, task in self._runs.values()]
            _, late = await asyncio.wait(tasks, timeout=OUTCOME_WAIT_AT_STOP_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if shutdown:
            await self._hand_back([run.job.lease for run in shutdown])
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._lease_conn.close()

    # --- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        state = self._state
        while not self._stopping:
            self._wake.clear()
            if self._retry_at is not None and self._retry_at <= time.monotonic():
                self._retry_at = None  # this claim takes the retry that came due
            free = self._concurrency - len(self._runs)
            if free > 0:
                limit = min(free, CLAIM_BATCH)
                claimed: list[jobs.ClaimedJob] = []
                try:
                    async with state.db.acquire() as conn:
                        if self._stopping:  # stopped while waiting for a connection
                            break
                        self._claiming = True
                        claimed = await jobs.claim_due(conn, state.worker_id, limit)
                except Exception as exc:
                    self._claiming = False
                    log.warning("claiming jobs failed: %s", exc)
                    await self._sleep(CLAIM_RETRY_SECONDS)
                    continue
                for job in claimed:
                    self._start(job)
                self._claiming = False
                self._more_due = len(claimed) == limit
                if not self._runs:
                    self._idle.set()
                if self._more_due and len(self._runs) < self._concurrency:
                    continue
            else:
                self._more_due = True  # a slot that frees up wakes the loop
            await self._sleep(POLL_EVERY_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        if self._retry_at is not None:
            seconds = max(0.0, min(seconds, self._retry_at - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _start(self, job: jobs.ClaimedJob) -> None:
        old = self._runs.get(job.id)
        if old is not None and not old[0].finishing:
            # our own earlier copy, whose lease lapsed and was reclaimed: it must stop (its
            # writes name its generation and change nothing any more)
            old[0].stop_reason = "lost"
            old[1].cancel()
        run = JobRun(job=job, state=self._state)
        task = asyncio.create_task(self._run(run))
        self._runs[job.id] = (run, task)
        task.add_done_callback(lambda _: self._finished(job.id, task))

    def _finished(self, job_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        entry = self._runs.get(job_id)
        if entry is not None and entry[1] is task:  # not a later claim of the same job
            del self._runs[job_id]
        if self._more_due:
            self._wake.set()

    # --- one job -----------------------------------------------------------------------------

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

    async def _complete(self, job: jobs.ClaimedJob, result: dict[str, Any]) -> None:
        extra = {"job_id": str(job.id), "kind": job.kind, "attempt": job.attempt}
        try:
            completed = await self._completions.complete(job.lease, result)
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
        # "shutdown": stop() hands the jobs back together

    async def _after_failure(self, job: jobs.ClaimedJob, exc: Exception) -> None:
        state = self._state
        error = describe(exc)
        if is_transient(exc) and job.attempt < job.max_attempts:
            delay = jobs.backoff_seconds(job.attempt)
            requeued = await self._write(
                jobs.schedule_retry, job.lease, state.worker_id, error, delay
            )
            if requeued is False:  # cancelled meanwhile, or the job is no longer this worker's
                log.info(
                    "job attempt failed; not requeued",
                    extra={"job_id": str(job.id), "attempt": job.attempt, "error": error},
                )
                return
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
            due = time.monotonic() + delay
            self._retry_at = due if self._retry_at is None else min(self._retry_at, due)
            self._wake.set()  # the claim loop sleeps until then at most
            return
        if is_transient(exc):
            error = f"gave up after {job.attempt} attempts: {error}"
        await self._write(jobs.fail, job.lease, state.worker_id, error)
        metrics.JOBS_FAILED.labels(job.kind).inc()
        log.error(
            "job failed", extra={"job_id": str(job.id), "attempt": job.attempt, "error": error}
        )

    async def _write(self, statement: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """One outcome write, returning what the statement returns (``None`` when it could
        not be written: the database is away, the lease lapses and the reaper returns the
        job)."""

        async def write() -> Any:
            async with self._state.db.acquire() as conn:
                return await statement(conn, *args)

        try:
            return await _retrying(write)
        except Exception as exc:
            log.warning("could not record a job's outcome: %s", exc)
            return None

    async def _hand_back(self, leases: list[jobs.Lease]) -> None:
        try:
            async with self._state.db.acquire() as conn:
                count = await jobs.hand_back(conn, self._state.worker_id, leases)
        except Exception as exc:  # the leases lapse and the reaper returns the jobs
            log.warning("could not hand back jobs: %s", exc)
            return
        log.info("jobs handed back at shutdown", extra={"count": count})

    # --- leases ------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Each second, on the drain's own connection: renew this process's leases, stop the
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
        if entry is not None and entry[0] is run and run.stop_reason is None:
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
