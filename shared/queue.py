"""The queue: the only module that imports ``arq``. ARQ on Redis carries every job.

- Durable jobs (reports, webhooks, imports, any kind added later): the record is written in
  the request's transaction (``shared.jobs.outbox``); after the commit the API hands the job
  to ARQ as its own ARQ job, ``<queue>:<job id>:<generation>``, calling the ARQ function named
  after its kind (``Queue.dispatch``, best effort: while Redis is down the request does not
  wait). The worker tier's relay (``Queue.missing`` + ``Queue.hand_over``) sends again every
  queued job whose ARQ copy Redis does not hold. The ARQ function claims the record under a
  lease with generation fencing before it runs (``worker.jobs``).
- Kinds in ``KINDS_WITH_OWN_LANE`` (reports) go to an ARQ queue of their own, served by the
  same worker process with few slots (``lane_name``): long jobs never take every slot from
  the short ones.
- Audit events are drained in batches by one coalesced ARQ job, ``drain_audit``, whose fixed
  ``_job_id`` makes a thousand enqueues in a burst one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)
from arq.cron import cron
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_unix_ms
from arq.worker import Worker, func
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.db.unit_of_work import NewJob
from shared.jobs.kinds import KINDS_WITH_OWN_LANE, JobKind
from shared.jobs.schemas import QueuedJob

log = logging.getLogger("stockroom.queue")

TASK_DRAIN_AUDIT = "drain_audit"

# ARQ's job keys are global to the Redis database, not per queue: ids are namespaced by queue
# so that two stacks (or test runs) sharing one Redis never swallow each other's jobs.

# The coalesced drain's id changes every this many seconds: a worker SIGKILLed while running
# a drain leaves ARQ's in-progress key of its id behind (for the lane's longest timeout), and
# it may hold back the coalesced wake-ups for one window at most (the relay's follow-up
# drains, under ids of their own, close the gap meanwhile).
AUDIT_DRAIN_WINDOW_SECONDS = 60


# ARQ's own timeout of a durable job's function: the job's lease, not this, finds a dead worker
# (ARQ keeps a started job's in-progress key this long + 10 s; the reaper and the relay remove
# the copies a dead worker leaves).
JOB_TIMEOUT_SECONDS = 24 * 3600
# A copy started this long ago whose record is still queued was started by a worker that died
# before its claim (a claim takes milliseconds): the relay hands the job over again.
CLAIM_LOST_AFTER_SECONDS = 10


def audit_drain_job_id(queue_name: str) -> str:
    return f"{queue_name}:audit-drain:{int(time.time() // AUDIT_DRAIN_WINDOW_SECONDS)}"


def arq_job_id(queue_name: str, job: QueuedJob) -> str:
    """A durable job's ARQ id: one per generation, so that a job handed over again (retry,
    hand-back, reclaim) never meets the copy of an earlier generation in ARQ's keys."""
    return f"{queue_name}:{job.id}:{job.generation}"


def lane_name(queue_name: str, kind: str) -> str:
    """The ARQ queue (sorted set) carrying this kind: ``QUEUE_NAME``, or for a kind with a
    lane of its own ``arq:queue:<QUEUE_NAME>:<kind>`` (under ARQ's own ``arq:queue`` prefix)."""
    return f"arq:queue:{queue_name}:{kind}" if kind in KINDS_WITH_OWN_LANE else queue_name


__all__ = [
    "CLAIM_LOST_AFTER_SECONDS",
    "JOB_TIMEOUT_SECONDS",
    "TASK_DRAIN_AUDIT",
    "CronSpec",
    "Lane",
    "Queue",
    "TaskSpec",
    "WorkerRunner",
    "arq_job_id",
    "audit_drain_job_id",
    "default_queue_name",
    "lane_name",
]

TaskFunc = Callable[..., Awaitable[Any]]


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 1
    settings.conn_retries = 0
    return settings


# ARQ's ``enqueue_job`` (WATCH, EXISTS, then MULTI/PSETEX/ZADD/EXEC: three round trips and
# most of the API's cost of an audit wake-up) as one atomic script: the job is added unless
# ARQ holds its id already (ARQ's dedupe by ``_job_id``); 1 when it was added. KEYS: the job's
# key, its result's key, the ARQ queue. ARGV: expiry (ms), the serialized job, score, id.
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


class Queue:
    """A producer's handle on the queue (API replicas, the relay, the CLI)."""

    ENQUEUE_CONCURRENCY = 32
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
        # redis-py's pool refuses past its size rather than wait: a burst of hand-overs takes
        # turns on part of it
        self._enqueue_slots = asyncio.Semaphore(self.ENQUEUE_CONCURRENCY)
        self._enqueue_script = redis.register_script(_ENQUEUE)

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
        """Hand the jobs that have just committed to ARQ: durable jobs each as its own ARQ
        job; audit events by a kick of the coalesced drain (throttled). Never raises, never
        waits for Redis: the hand-over runs in the background, and what it cannot deliver
        the relay delivers."""
        if time.monotonic() < self._down_until:
            return
        durable = [QueuedJob(j.id, 0, j.kind) for j in jobs if j.kind != JobKind.audit]
        if durable:
            self._in_background(self._hand_over_or_back_off(durable))
        if len(durable) < len(jobs):
            self._schedule_audit_kick()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _hand_over_or_back_off(self, jobs: Sequence[QueuedJob]) -> None:
        try:
            await self.hand_over(jobs)
        except Exception as exc:
            self._down_until = time.monotonic() + self.BACKOFF_SECONDS
            log.warning("job hand-over failed; the relay will deliver: %s", exc)

    async def hand_over(self, jobs: Sequence[QueuedJob]) -> int:
        """Enqueue each job's ARQ copy (a no-op for a copy ARQ holds already: the id is its
        key); returns how many were new."""
        enqueued = await asyncio.gather(*(self._enqueue(job) for job in jobs))
        return sum(enqueued)

    async def _enqueue(self, job: QueuedJob) -> bool:
        due = job.due if job.due is not None and job.due > datetime.now(UTC) else None
        async with self._enqueue_slots:
            return await self._enqueue_copy(
                job.kind,
                (str(job.id), job.generation),
                arq_job_id(self.queue_name, job),
                lane_name(self.queue_name, job.kind),
                run_at_ms=to_unix_ms(due) if due is not None else None,
            )

    async def _enqueue_copy(
        self,
        function: str,
        args: tuple[Any, ...],
        arq_id: str,
        arq_queue: str,
        run_at_ms: int | None = None,
    ) -> bool:
        """ARQ's ``enqueue_job``, in one round trip (``_ENQUEUE``): False when ARQ holds a job
        of this id already (queued, running, or its result kept)."""
        now = timestamp_ms()
        score = now if run_at_ms is None else run_at_ms
        payload = serialize_job(function, args, {}, None, now, serializer=self.redis.job_serializer)
        added = await self._enqueue_script(
            keys=[job_key_prefix + arq_id, result_key_prefix + arq_id, arq_queue],
            args=[max(score - now, 0) + self.redis.expires_extra_ms, payload, score, arq_id],
        )
        return bool(added)

    async def lost(self, jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
        """Of these queued jobs, those whose ARQ copy will not run: Redis does not hold it
        (never handed over, or lost), or a worker started it more than
        ``CLAIM_LOST_AFTER_SECONDS`` ago without claiming the record (it died in between:
        ARQ would keep the copy's in-progress key for the job's timeout). One round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                arq_id = arq_job_id(self.queue_name, job)
                pipe.exists(job_key_prefix + arq_id)
                pipe.pttl(in_progress_key_prefix + arq_id)
            answers = await pipe.execute()
        # ARQ sets the in-progress key to the lane's longest timeout + 10 s (every lane's
        # longest is JOB_TIMEOUT_SECONDS): what is left of it tells when the copy started
        started_long_ago = (JOB_TIMEOUT_SECONDS + 10 - CLAIM_LOST_AFTER_SECONDS) * 1000
        return [
            job
            for job, held, ttl_ms in zip(jobs, answers[0::2], answers[1::2], strict=True)
            if not held or 0 < ttl_ms < started_long_ago
        ]

    async def forget(self, copies: Sequence[QueuedJob]) -> None:
        """Remove ARQ copies that will not run (a generation the record has moved past, or one
        a dead worker started), in-progress key included, so that they never hold the head of
        the queue or block the copy handed over next."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for copy in copies:
                arq_id = arq_job_id(self.queue_name, copy)
                pipe.zrem(lane_name(self.queue_name, copy.kind), arq_id)
                pipe.delete(job_key_prefix + arq_id, in_progress_key_prefix + arq_id)
            await pipe.execute()

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

        self._in_background(kick())

    async def kick_audit_drain(self) -> None:
        """Make sure one ``drain_audit`` is queued (a no-op while one is queued already)."""
        await self._enqueue_copy(
            TASK_DRAIN_AUDIT, (), audit_drain_job_id(self.queue_name), self.queue_name
        )

    async def follow_up_audit_drain(self, delay_seconds: float = 0.02) -> None:
        """A drain under a unique id, which nothing can coalesce away: shortly after a drain
        ends (a wake-up sent while a drain is finishing is dropped, since ARQ still holds the
        drain's id) and from the relay when events wait longer than they should."""
        await self._enqueue_copy(
            TASK_DRAIN_AUDIT,
            (),
            f"{audit_drain_job_id(self.queue_name)}:follow-up:{uuid.uuid4().hex}",
            self.queue_name,
            run_at_ms=timestamp_ms() + round(delay_seconds * 1000),
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

    def lanes(self) -> list[str]:
        """Every ARQ queue of this stack."""
        return [self.queue_name] + [lane_name(self.queue_name, k) for k in KINDS_WITH_OWN_LANE]

    async def depth(self) -> tuple[int, int]:
        """``(ready, deferred)``: jobs in ARQ's queues due now and due later."""
        now_ms = timestamp_ms()  # as ARQ scores a job enqueued now (rounded, not truncated)
        async with self.redis.pipeline(transaction=False) as pipe:
            for lane in self.lanes():
                pipe.zcount(lane, "-inf", now_ms)
                pipe.zcount(lane, f"({now_ms}", "+inf")
            counts = [int(c) for c in await pipe.execute()]
        return sum(counts[0::2]), sum(counts[1::2])

    async def in_progress_count(self) -> int:
        """ARQ jobs of this stack that a worker has started and not finished."""
        count = 0
        pattern = f"{in_progress_key_prefix}{self.queue_name}:*"
        async for _ in self.redis.scan_iter(match=pattern, count=1000):
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


@dataclass(frozen=True, slots=True)
class Lane:
    """One ARQ queue a worker process serves, with its own slots (ARQ's ``max_jobs``)."""

    queue_name: str
    tasks: Sequence[TaskSpec]
    max_jobs: int
    poll_delay: float
    crons: Sequence[CronSpec] = field(default_factory=tuple)


_REDIS_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class WorkerRunner:
    """ARQ workers built from our lanes (one per ARQ queue, in one process and one event loop),
    inside a process whose own resources do not depend on Redis; ``run()`` blocks and handles
    SIGINT/SIGTERM.

    ``on_process_start`` runs once, before the first ARQ workers start, and
    ``on_process_stop`` once, after the last have stopped (signal, end of a burst, an error):
    what they open (the database pool, the lease keeper) works whether or not Redis is
    reachable. ``on_startup`` runs each time an ARQ worker has connected to Redis. ARQ's worker
    exits when it cannot reach Redis, at start or mid-poll; ours then stops the other lanes and
    starts them all again after a pause, keeping the event loop and the process's other work
    (its leases) undisturbed, so a Redis outage needs no process supervisor to recover from.
    ``on_stop_requested`` is called at SIGINT/SIGTERM, before ARQ's own handling: the process
    stops taking work at once; ARQ waits ``job_completion_wait`` for the running jobs."""

    RESTART_DELAY_SECONDS = 1.0

    def __init__(
        self,
        *,
        redis_url: str,
        lanes: Sequence[Lane],
        on_startup: Callable[[dict[str, Any]], Awaitable[None]],
        on_process_start: Callable[[], Awaitable[None]] | None = None,
        on_process_stop: Callable[[], Awaitable[None]] | None = None,
        on_stop_requested: Callable[[], None] | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        job_completion_wait: int = 20,
    ) -> None:
        self._on_process_start = on_process_start
        self._on_process_stop = on_process_stop
        self._on_stop_requested = on_stop_requested
        self._handle_signals = handle_signals
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        common: dict[str, Any] = {
            "redis_settings": redis_settings(redis_url),
            "keep_result": 0,
            "max_tries": 1000,
            "on_startup": cast(Any, on_startup),
            "burst": burst,
            "handle_signals": handle_signals,
            "allow_abort_jobs": False,
            "health_check_interval": 30,
            # SIGTERM: stop taking jobs, let running ones finish for this long, then cancel
            # them (the durable jobs' own grace period ends before: see worker.jobs)
            "job_completion_wait": job_completion_wait,
        }
        self._lane_options = [
            {
                **common,
                "functions": [_function(t) for t in lane.tasks],
                "cron_jobs": [_cron(lane.queue_name, c) for c in lane.crons],
                "queue_name": lane.queue_name,
                "max_jobs": lane.max_jobs,
                "poll_delay": lane.poll_delay,
            }
            for lane in lanes
        ]
        self.workers: list[Worker] = []  # the current ARQ workers, one per lane

    # --- signals -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """Ours, on the running loop: installed before anything starts, and again after the
        ARQ workers are made (ARQ's constructor installs its own)."""
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
        for worker in self.workers:  # ARQ's own handling: finish its tasks, then stop its loop
            worker.handle_sig_wait_for_completion(signal.Signals(signum))

    # --- running -----------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.run(self.run_async())

    async def run_async(self) -> None:
        """The process's resources, then ARQ workers (new ones after each loss of Redis)
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
                lost = await self._run_arq_workers()
                if lost is None or self._stopping:
                    break
                log.error("worker lost Redis (%s); starting again", lost)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), self.RESTART_DELAY_SECONDS)
        finally:
            if self._on_process_stop is not None:
                await self._on_process_stop()

    async def _run_arq_workers(self) -> BaseException | None:
        """One ARQ worker per lane, from their connection to Redis to their close: the Redis
        error that ended one (the others are stopped then), or ``None`` when they stopped (a
        signal, the end of a burst). Other errors are raised."""
        workers: list[Worker] = [_Worker(**options) for options in self._lane_options]
        self.workers = workers
        if self._handle_signals:
            self._install_signal_handlers()
        mains: list[asyncio.Task[None]] = []
        for worker in workers:
            worker.main_task = asyncio.create_task(worker.main())
            mains.append(worker.main_task)
        try:
            done, _ = await asyncio.wait(mains, return_when=asyncio.FIRST_EXCEPTION)
            if not all(m.done() for m in mains) and any(
                not m.cancelled() and m.exception() is not None for m in done
            ):
                for main in mains:
                    main.cancel()
            await asyncio.wait(mains)
        finally:
            for main in mains:
                if not main.done():  # run_async itself was cancelled
                    main.cancel()
            await asyncio.wait(mains)
            for worker in workers:
                await self._close_arq_worker(worker)
        errors = [e for m in mains if not m.cancelled() and (e := m.exception()) is not None]
        if not errors:
            return None
        for error in errors:
            if not isinstance(error, _REDIS_LOST):
                raise error
        return errors[0]

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
        for worker in self.workers:
            await self._close_arq_worker(worker)


# ARQ's check-and-mark of a job it is about to start (``Worker.start_jobs``: WATCH, EXISTS,
# ZSCORE, then MULTI/PSETEX/EXEC, four round trips a job) as one atomic script: the job is
# started only if no worker has marked it in progress and it is queued and due; its score is
# returned, or nothing when the job is not to be started.
_MARK_IN_PROGRESS = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('psetex', KEYS[1], ARGV[3], '1')
return score
"""


class _Worker(Worker):
    """ARQ's worker, minus two wastes.

    - Each poll reads the head of the queue, where the jobs already running stay until they
      finish, and ARQ's ``start_jobs`` checks each of them in Redis before skipping it. With
      jobs that run longer than a poll (any real job), a busy worker spent most of its Redis
      round trips, and much of its CPU, re-checking its own running jobs. Those are known here
      (``self.tasks``): they are skipped without asking Redis.
    - ARQ marks a job in progress with a WATCH transaction (four round trips); here one
      script does the same check and mark atomically (``_MARK_IN_PROGRESS``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mark_script: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """ARQ's ``start_jobs`` (slots, counter, task per job), the mark made by the script."""
        if self._mark_script is None:
            self._mark_script = self.pool.register_script(_MARK_IN_PROGRESS)
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        for job_id in (j.decode() for j in job_ids):
            if job_id in self.tasks:
                continue
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            score = await self._mark_script(
                keys=[in_progress_key_prefix + job_id, self.queue_name],
                args=[job_id, timestamp_ms(), timeout_ms],
            )
            if score is None:  # started elsewhere, finished, or re-enqueued for later
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task


def _function(task: TaskSpec) -> Any:
    return func(
        cast(Any, task.coroutine),
        name=task.name,
        timeout=task.timeout_seconds,
        keep_result=0,
        max_tries=1000,
    )


def _cron(queue_name: str, spec: CronSpec) -> Any:
    return cron(
        cast(Any, spec.coroutine),
        # the cron's job id is "<name>:<tick>": namespaced like every other id
        name=f"{queue_name}:cron:{spec.name}",
        second=set(range(0, 60, spec.every_seconds)),
        run_at_startup=True,
        unique=True,
        timeout=60,
        keep_result=0,
        max_tries=1,
    )
