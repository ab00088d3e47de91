"""The queue: the only module that imports ``arq``.

Jobs are durable rows in PostgreSQL (``jobs``, the outbox). Redis carries the audit wake-ups,
the cron ticks and the worker heartbeats:
- audit events are drained in batches by one coalesced ARQ job, ``drain_audit``, whose fixed
  ``_job_id`` makes a thousand enqueues in a burst one job; the wake-up is sent after the
  database commit and is best effort: when Redis is down the events wait in the outbox and
  the worker's relay cron wakes a drain once it is back;
- every other job kind never travels through Redis: workers claim due rows from PostgreSQL in
  batches, woken by the ``NOTIFY`` that the row's own INSERT sends (``shared.jobs.outbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, in_progress_key_prefix
from arq.cron import cron
from arq.worker import Worker, func
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.db.unit_of_work import NewJob
from shared.jobs.kinds import JobKind

log = logging.getLogger("stockroom.queue")

TASK_DRAIN_AUDIT = "drain_audit"
# What API replicas older than the PostgreSQL-claimed jobs enqueued for each job; a worker
# keeps the name registered as a plain wake-up during a rolling upgrade.
TASK_RUN_JOB = "run_job"

# ARQ's job keys are global to the Redis database, not per queue: ids are namespaced by queue
# so that two stacks (or test runs) sharing one Redis never swallow each other's jobs.


def audit_drain_job_id(queue_name: str) -> str:
    return f"{queue_name}:audit-drain"


__all__ = [
    "TASK_DRAIN_AUDIT",
    "TASK_RUN_JOB",
    "CronSpec",
    "Queue",
    "TaskSpec",
    "WorkerRunner",
    "audit_drain_job_id",
    "default_queue_name",
]

TaskFunc = Callable[..., Awaitable[Any]]


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 1
    settings.conn_retries = 0
    return settings


class Queue:
    """A producer's handle on the queue (API replicas, the relay, the CLI)."""

    # After a failed dispatch, skip Redis for this long: requests must not each wait out a
    # connect timeout while Redis is down; the relay delivers what they leave behind.
    BACKOFF_SECONDS = 1.0

    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._down_until = 0.0
        self._kick_pending = False
        self._last_kick = float("-inf")  # when the latest audit kick was (or will be) sent
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, redis_url: str, queue_name: str) -> Queue:
        """Connects lazily: a process starts (and accepts writes) while Redis is down."""
        pool = ConnectionPool.from_url(
            redis_url, socket_connect_timeout=1, socket_timeout=5, max_connections=64
        )
        return cls(ArqRedis(connection_pool=pool, default_queue_name=queue_name), queue_name)

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout=2))
        except Exception:
            return False

    async def dispatch(self, jobs: Sequence[NewJob]) -> None:
        """Wake the workers for jobs that have just committed: audit events are drained from
        the outbox by a coalesced ARQ job (kicked here, throttled); every other job woke the
        workers by ``NOTIFY`` at commit. Never raises: an audit wake-up that fails is sent
        again by the relay."""
        if time.monotonic() >= self._down_until and any(j.kind == JobKind.audit for j in jobs):
            self._schedule_audit_kick()

    # Under load every request writes an audit event; one wake-up per this interval per
    # process is enough (a drain takes everything pending, and a follow-up drain closes the
    # gap at its end), and it saves an ARQ enqueue — several Redis round trips, ~0.45 ms of
    # the API's CPU — per request. 20 ms: at most 50 wake-ups a second, ~2 % of a core. 50 ms
    # was tried: it saved ~1.4 % of a core at full restock rate and raised the idle pickup
    # latency of audit events sent 20-50 ms apart from ~6 to ~14 ms (p50).
    AUDIT_KICK_INTERVAL_SECONDS = 0.02

    def _schedule_audit_kick(self) -> None:
        """A throttle, leading edge first: the first event after a quiet interval is kicked at
        once; events within the interval after a kick share one trailing kick at its end. At
        most one kick per interval, and every event has a kick sent after it."""
        if self._kick_pending:  # a kick not sent yet covers this event too
            return
        self._kick_pending = True
        now = time.monotonic()
        delay = max(0.0, self._last_kick + self.AUDIT_KICK_INTERVAL_SECONDS - now)
        self._last_kick = now + delay

        async def kick() -> None:
            if delay:
                await asyncio.sleep(delay)
            self._kick_pending = False
            try:
                await self.kick_audit_drain()
            except Exception as exc:
                self._down_until = time.monotonic() + self.BACKOFF_SECONDS
                log.warning("audit wake-up failed; the relay will deliver: %s", exc)

        task = asyncio.get_running_loop().create_task(kick())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def kick_audit_drain(self) -> None:
        """Make sure one ``drain_audit`` is queued (a no-op while one is queued already)."""
        await self.redis.enqueue_job(
            TASK_DRAIN_AUDIT,
            _job_id=audit_drain_job_id(self.queue_name),
            _queue_name=self.queue_name,
        )

    async def follow_up_audit_drain(self, delay_seconds: float = 0.02) -> None:
        """A drain under a unique id, which nothing can coalesce away: shortly after a drain
        ends (a wake-up sent while a drain is finishing is dropped, since ARQ still holds the
        drain's id) and from the relay when events wait longer than they should."""
        await self.redis.enqueue_job(
            TASK_DRAIN_AUDIT,
            _job_id=f"{audit_drain_job_id(self.queue_name)}:follow-up:{uuid.uuid4().hex}",
            _queue_name=self.queue_name,
            _defer_by=delay_seconds,
        )

    def is_follow_up_drain(self, arq_job_id: str | None) -> bool:
        return bool(arq_job_id) and ":follow-up:" in str(arq_job_id)

    def _worker_key(self, worker_id: str) -> str:
        return f"stockroom:{self.queue_name}:worker:{worker_id}"

    async def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_seconds: int) -> None:
        """One key per worker process, expiring unless renewed: replicas never overwrite
        each other (ARQ keeps a single health-check key per queue)."""
        await self.redis.set(self._worker_key(worker_id), json.dumps(info), ex=ttl_seconds)

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.delete(self._worker_key(worker_id))

    async def live_workers(self) -> list[dict[str, Any]]:
        keys = [k async for k in self.redis.scan_iter(match=self._worker_key("*"), count=1000)]
        if not keys:
            return []
        values = await self.redis.mget(keys)
        return [json.loads(v) for v in values if v]

    async def depth(self) -> tuple[int, int]:
        """``(ready, deferred)``: jobs in the queue due now and due later."""
        now_ms = int(time.time() * 1000)
        ready = await self.redis.zcount(self.queue_name, "-inf", now_ms)
        deferred = await self.redis.zcount(self.queue_name, f"({now_ms}", "+inf")
        return int(ready), int(deferred)

    async def in_progress_count(self) -> int:
        count = 0
        async for _ in self.redis.scan_iter(match=f"{in_progress_key_prefix}*", count=1000):
            count += 1
        return count


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    coroutine: TaskFunc
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class CronSpec:
    name: str
    coroutine: TaskFunc
    every_seconds: int  # 1, 2, 3, 5, 10, 15, 20 or 30: a divisor of 60


_REDIS_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class WorkerRunner:
    """An ARQ worker built from our task table, inside a process whose own resources do not
    depend on Redis; ``run()`` blocks and handles SIGINT/SIGTERM.

    ``on_process_start`` runs once, before the first ARQ worker starts, and
    ``on_process_stop`` once, after the last one has stopped (signal, end of a burst, an
    error): what they open (the database pool, the PostgreSQL job drain) works whether or not
    Redis is reachable. ``on_startup`` runs each time an ARQ worker has connected to Redis.
    ARQ's worker exits when it cannot reach Redis, at start or mid-poll; ours starts a new one
    after a pause, keeping the event loop and the process's other work (the job drain, its
    leases) undisturbed, so a Redis outage needs no process supervisor to recover from.
    ``on_stop_requested`` is called at SIGINT/SIGTERM, before ARQ's own handling: the process
    stops taking work at once."""

    RESTART_DELAY_SECONDS = 1.0

    def __init__(
        self,
        *,
        redis_url: str,
        queue_name: str,
        tasks: Sequence[TaskSpec],
        crons: Sequence[CronSpec],
        max_jobs: int,
        poll_delay: float,
        on_startup: Callable[[dict[str, Any]], Awaitable[None]],
        on_process_start: Callable[[], Awaitable[None]] | None = None,
        on_process_stop: Callable[[], Awaitable[None]] | None = None,
        on_stop_requested: Callable[[], None] | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        shutdown_grace_seconds: int = 20,
    ) -> None:
        self._on_process_start = on_process_start
        self._on_process_stop = on_process_stop
        self._on_stop_requested = on_stop_requested
        self._handle_signals = handle_signals
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        functions = [
            func(
                cast(Any, t.coroutine),
                name=t.name,
                timeout=t.timeout_seconds,
                keep_result=0,
                max_tries=1000,
            )
            for t in tasks
        ]
        cron_jobs = [
            cron(
                cast(Any, c.coroutine),
                # the cron's job id is "<name>:<tick>": namespaced like every other id
                name=f"{queue_name}:cron:{c.name}",
                second=set(range(0, 60, c.every_seconds)),
                run_at_startup=True,
                unique=True,
                timeout=60,
                keep_result=0,
                max_tries=1,
            )
            for c in crons
        ]
        self._options: dict[str, Any] = {
            "functions": functions,
            "cron_jobs": cron_jobs,
            "queue_name": queue_name,
            "redis_settings": redis_settings(redis_url),
            "max_jobs": max_jobs,
            "poll_delay": poll_delay,
            "keep_result": 0,
            "max_tries": 1000,
            "on_startup": cast(Any, on_startup),
            "burst": burst,
            "handle_signals": handle_signals,
            "allow_abort_jobs": False,
            "health_check_interval": 30,
            # SIGTERM: stop taking jobs, let running ones finish for this long, then cancel
            # them (ARQ's tasks are short: audit drains and cron ticks).
            "job_completion_wait": shutdown_grace_seconds,
        }
        self.worker: Worker | None = None  # the current ARQ worker

    # --- signals -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """Ours, on the running loop: installed before anything starts, and again after each
        ARQ worker is made (ARQ's constructor installs its own)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if not self._stopping:
            self._stopping = True
            if self._stop_requested is not None:
                self._stop_requested.set()
            if self._on_stop_requested is not None:
                self._on_stop_requested()
        worker = self.worker
        if worker is not None:  # ARQ's own handling: finish its tasks, then stop its loop
            arq_handler = (
                worker.handle_sig_wait_for_completion
                if self._options["job_completion_wait"]
                else worker.handle_sig
            )
            arq_handler(signal.Signals(signum))

    # --- running -----------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.run(self.run_async())

    async def run_async(self) -> None:
        """The process's resources, then ARQ workers (a new one after each loss of Redis)
        until a signal or the end of a burst, then the process's shutdown."""
        self._stop_requested = asyncio.Event()
        if self._handle_signals:
            self._install_signal_handlers()
        try:
            if self._on_process_start is not None:
                await self._on_process_start()
            if self._stopping and self._on_stop_requested is not None:
                self._on_stop_requested()  # the signal came while the process was starting
            while not self._stopping:
                lost = await self._run_arq_worker()
                if lost is None or self._stopping:
                    break
                log.error("worker lost Redis (%s); starting again", lost)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), self.RESTART_DELAY_SECONDS)
        finally:
            if self._on_process_stop is not None:
                await self._on_process_stop()

    async def _run_arq_worker(self) -> BaseException | None:
        """One ARQ worker, from its connection to Redis to its close: the Redis error that
        ended it, or ``None`` when it stopped (a signal, the end of a burst). Other errors
        are raised."""
        self.worker = worker = Worker(**self._options)
        if self._handle_signals:
            self._install_signal_handlers()
        main = worker.main_task = asyncio.create_task(worker.main())
        try:
            await asyncio.wait([main])
        finally:
            if not main.done():  # run_async itself was cancelled
                main.cancel()
                await asyncio.wait([main])
            await self._close_arq_worker(worker)
        if main.cancelled():
            return None
        error = main.exception()
        if error is None or isinstance(error, _REDIS_LOST):
            return error
        raise error

    async def _close_arq_worker(self, worker: Worker) -> None:
        """ARQ's close (it waits for its running tasks), which fails on a Redis connection
        that is gone; the connection pool is closed either way."""
        closing = asyncio.create_task(worker.close())
        await asyncio.wait([closing])
        if not closing.cancelled():
            if closing.exception() is None:
                return
            log.warning("closing the ARQ worker failed: %r", closing.exception())
        pool: ArqRedis | None = getattr(worker, "_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.aclose(close_connection_pool=True)

    async def close(self) -> None:
        """Nothing left to close after ``run_async`` (kept for callers that close a runner)."""
        if self.worker is not None:
            await self._close_arq_worker(self.worker)
