#!/usr/bin/env python3
"""Worker processes for the worker benchmarks (started by them; not for production).

``worker_proc.py ours [options]``
    Our worker exactly as ``stockroom worker`` builds it (``worker.main.run``: settings from
    ``STOCKROOM_*``, the real task table, crons, lease, heartbeat), plus a no-op handler for the
    bench-only job kind ``bench`` so that the ``run_job`` path (claim under a lease, handler,
    complete) can be timed without a real job's work. Options change one module-level knob
    each, to measure a proposed setting without editing the product:
      --poll-delay S     worker.main.POLL_DELAY_SECONDS (production: 0.01)
      --audit-batch N    worker.tasks.AUDIT_BATCH (production: 500)
      --drain-linger-ms M
                         drain_audit keeps polling PostgreSQL (every 5 ms) for M ms after the
                         queue looks empty before it returns: narrows the coalescing gap but
                         cannot close it (worker_audit_lag.py)
      --drain-follow-up-ms M
                         drain_audit, when run by a kick, enqueues one follow-up drain under a
                         fresh job id (never deduplicated) M ms later; a follow-up does not
                         enqueue another. A kick that ARQ dropped because the kicked drain was
                         finishing (its job key still exists until ARQ's finish_job) is covered
                         by the follow-up: closes the coalescing gap (worker_audit_lag.py)
      --batched-db       run_job's claim and complete statements are coalesced across the
                         concurrent jobs of this process into one statement per ~batch
                         (micro-batching; see worker_throughput.py)
      --no-pool-reset    the asyncpg pool is created with ``reset=`` a no-op: releasing a
                         connection no longer sends asyncpg's default reset query
                         (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``,
                         one round trip per acquire/release); an open transaction is still
                         rolled back. Safe here: the code uses only transaction-scoped
                         advisory locks and ``SET LOCAL``.
      --quiet-job-log    the per-job INFO line "job complete" is not written (logger
                         ``stockroom.worker`` at WARNING)
      --pg-drain         adds an ARQ task ``drain_jobs`` (a prototype, not in the product):
                         one coalesced ARQ job claims due jobs straight from PostgreSQL in
                         batches (``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT k)``),
                         runs up to WORKER_CONCURRENCY handlers at once under the usual lease,
                         and completes them in batches; Redis carries only the wake-up, as for
                         audit events. Returns when nothing is due or running for 20 ms.

``worker_proc.py raw --queue Q --poll-delay S --max-jobs N``
    A raw ARQ worker (no database) with two functions: ``noop`` and ``stamp`` (LPUSHes its
    start time to the list named by its argument). ``keep_result=0`` and ARQ's per-job INFO
    logs off, as in our worker: "tuned raw ARQ". Writes ``Q:ready:<pid>`` when started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# --- raw ARQ -----------------------------------------------------------------------------------


def run_raw(args: argparse.Namespace) -> int:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    queue = args.queue

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    async def stamp(ctx: dict[str, Any], key: str) -> None:
        started = time.time()
        await ctx["redis"].lpush(key, repr(started))

    async def on_startup(ctx: dict[str, Any]) -> None:
        await ctx["redis"].set(f"{queue}:ready:{os.getpid()}", "1", ex=600)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await ctx["redis"].delete(f"{queue}:ready:{os.getpid()}")

    worker = Worker(
        functions=[
            func(noop, name="noop", keep_result=0),
            func(stamp, name="stamp", keep_result=0),
        ],
        queue_name=queue,
        redis_settings=RedisSettings.from_dsn(
            os.environ.get("STOCKROOM_REDIS_URL", "redis://127.0.0.1:6379/0")
        ),
        max_jobs=args.max_jobs,
        poll_delay=args.poll_delay,
        keep_result=0,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        handle_signals=True,
        health_check_interval=30,
        health_check_key=f"{queue}:health-check",
    )
    worker.run()
    return 0


# --- ours --------------------------------------------------------------------------------------


async def bench_noop(run: Any) -> dict[str, Any]:
    return {}


def patch_drain_linger(linger_ms: float) -> None:
    """drain_audit, but it keeps looking for pending events for ``linger_ms`` after the queue
    looked empty (5 ms apart): a kick that ARQ drops because this job is still running is then
    served by this run instead of waiting for the relay cron."""
    from shared.audit import service as audit
    from worker import tasks
    from worker.context import context_of

    async def drain_audit(ctx: dict[str, Any]) -> int:
        state = context_of(ctx)
        total = 0
        async with state.db.pool.acquire() as conn:
            idle_since = time.monotonic()
            while True:
                done = await audit.drain_batch(conn, tasks.AUDIT_BATCH)
                total += done
                if done >= tasks.AUDIT_BATCH:
                    continue
                if done:
                    idle_since = time.monotonic()
                if time.monotonic() - idle_since >= linger_ms / 1000:
                    break
                await asyncio.sleep(0.005)
        if total:
            tasks.log.info("audit entries written", extra={"count": total})
        return total

    tasks.drain_audit = drain_audit


def patch_drain_follow_up(delay_ms: float) -> None:
    from shared.queue import TASK_DRAIN_AUDIT, audit_drain_job_id
    from worker import tasks
    from worker.context import context_of

    drain = tasks.drain_audit

    async def drain_audit(ctx: dict[str, Any]) -> int:
        total = await drain(ctx)
        queue = context_of(ctx).settings.queue_name
        prefix = audit_drain_job_id(queue) + ":follow-up:"
        if not str(ctx.get("job_id", "")).startswith(prefix):
            await ctx["redis"].enqueue_job(
                TASK_DRAIN_AUDIT,
                _job_id=prefix + uuid.uuid4().hex,
                _queue_name=queue,
                _defer_by=delay_ms / 1000,
            )
        return total

    tasks.drain_audit = drain_audit


class _Batcher:
    """Coalesces calls made while one statement is in flight into the next statement."""

    def __init__(self, run_batch: Callable[[list[Any]], Awaitable[list[Any]]]) -> None:
        self._run_batch = run_batch
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # a reference, or the loop may be GC'd

    async def submit(self, item: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return await fut

    async def _loop(self) -> None:
        try:
            await asyncio.sleep(0)  # let the other ready jobs of this tick join
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run_batch([item for item, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._running = False


def patch_batched_db() -> None:
    """A run_job whose claim and complete statements are coalesced per process: one
    ``UPDATE ... FROM unnest(...)`` for all the claims (or completes) requested while the
    previous statement was in flight, on a connection of the batcher's own (no pool acquire per
    job). Same WHERE clauses and effects as shared.jobs.service.claim/complete; the lease,
    failure, retry and cancel paths are worker.jobs' own."""
    from shared import metrics
    from shared.jobs.service import LEASE_SECONDS, ClaimedJob
    from shared.logs import request_id_var
    from worker import jobs as worker_jobs
    from worker import main as worker_main
    from worker.context import context_of

    batchers: dict[str, _Batcher] = {}

    def batchers_for(pool: Any) -> tuple[_Batcher, _Batcher]:
        if "claim" not in batchers:

            async def claim_batch(items: list[tuple[uuid.UUID, int, str]]) -> list[Any]:
                async with pool.acquire() as conn:
                    rows = await conn.fetch(
                        f"""
                        UPDATE jobs j SET status = 'in_progress', attempts = j.attempts + 1,
                            started_at = coalesce(j.started_at, now()), worker_id = $3,
                            lease_until = now() + make_interval(secs => {LEASE_SECONDS})
                        FROM unnest($1::uuid[], $2::int[]) AS c(id, generation)
                        WHERE j.id = c.id AND j.generation = c.generation
                          AND j.status = 'queued' AND NOT j.cancel_requested
                          AND j.run_after <= now() + interval '1 second'
                        RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts,
                            j.request_id
                        """,
                        [i[0] for i in items],
                        [i[1] for i in items],
                        items[0][2],
                    )
                by_id = {r["id"]: r for r in rows}
                out: list[Any] = []
                for job_id, _, _ in items:
                    r = by_id.pop(job_id, None)
                    out.append(
                        None
                        if r is None
                        else ClaimedJob(
                            id=r["id"], kind=r["kind"], payload=r["payload"],
                            attempt=r["attempts"], max_attempts=r["max_attempts"],
                            request_id=r["request_id"],
                        )
                    )  # fmt: skip
                return out

            batchers["claim"] = _Batcher(claim_batch)
            batchers["complete"] = _complete_batcher(pool)
        return batchers["claim"], batchers["complete"]

    async def run_job(ctx: dict[str, Any], job_id: str, generation: int) -> str:
        state = context_of(ctx)
        claims, completes = batchers_for(state.db.pool)
        claimed = await claims.submit((uuid.UUID(job_id), generation, state.worker_id))
        if claimed is None:
            return "skipped"
        token = request_id_var.set(claimed.request_id)
        state.jobs_running += 1
        started = time.monotonic()
        run = worker_jobs.JobRun(job=claimed, state=state)
        handler = ctx["handlers"].get(claimed.kind) or worker_jobs._unknown_kind
        task = asyncio.create_task(handler(run))
        try:
            lease = asyncio.create_task(worker_jobs._keep_lease(run, task))
            try:
                result = await asyncio.shield(task)
            finally:
                lease.cancel()
            await completes.submit((claimed.id, state.worker_id, result))
            metrics.JOBS_COMPLETED.labels(claimed.kind).inc()
            return "complete"
        except Exception as exc:
            await worker_jobs._after_failure(state, claimed, exc)
            return "failed"
        finally:
            metrics.JOB_DURATION.labels(claimed.kind).observe(time.monotonic() - started)
            state.jobs_running -= 1
            state.jobs_done += 1
            request_id_var.reset(token)

    worker_main.run_job = run_job  # type: ignore[attr-defined]  # read by build_runner


def _complete_batcher(pool: Any) -> _Batcher:
    async def complete_batch(items: list[tuple[uuid.UUID, str, Any]]) -> list[Any]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                """
                UPDATE jobs j SET status = 'complete', progress = 100, result = c.result,
                    error = NULL, finished_at = now(), lease_until = NULL
                FROM unnest($1::uuid[], $2::jsonb[]) AS c(id, result)
                WHERE j.id = c.id AND j.worker_id = $3 AND j.status = 'in_progress'
                RETURNING j.id
                """,
                [i[0] for i in items],
                [i[2] for i in items],
                items[0][1],
            )
        done = {r["id"] for r in rows}
        return [i[0] in done for i in items]

    return _Batcher(complete_batch)


def pg_drain_task(batch: int = 100, linger_ms: float = 20) -> Callable[..., Awaitable[int]]:
    from shared import metrics
    from shared.jobs.service import LEASE_SECONDS, ClaimedJob
    from worker import jobs as worker_jobs
    from worker.context import context_of

    claim_sql = f"""
        UPDATE jobs j SET status = 'in_progress', attempts = j.attempts + 1,
            started_at = coalesce(j.started_at, now()), worker_id = $2,
            lease_until = now() + make_interval(secs => {LEASE_SECONDS})
        FROM (SELECT id FROM jobs
              WHERE status = 'queued' AND kind <> 'audit' AND NOT cancel_requested
                AND run_after <= now()
              ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED) c
        WHERE j.id = c.id
        RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts, j.request_id
    """
    completers: dict[int, _Batcher] = {}

    async def run_one(ctx: dict[str, Any], claimed: Any, completes: _Batcher) -> None:
        state = context_of(ctx)
        state.jobs_running += 1
        run = worker_jobs.JobRun(job=claimed, state=state)
        handler = ctx["handlers"].get(claimed.kind) or worker_jobs._unknown_kind
        task = asyncio.create_task(handler(run))
        try:
            lease = asyncio.create_task(worker_jobs._keep_lease(run, task))
            try:
                result = await asyncio.shield(task)
            finally:
                lease.cancel()
            await completes.submit((claimed.id, state.worker_id, result))
            metrics.JOBS_COMPLETED.labels(claimed.kind).inc()
        except Exception as exc:
            await worker_jobs._after_failure(state, claimed, exc)
        finally:
            state.jobs_running -= 1
            state.jobs_done += 1

    async def drain_jobs(ctx: dict[str, Any]) -> int:
        state = context_of(ctx)
        completes = completers.setdefault(id(state), _complete_batcher(state.db.pool))
        limit = state.settings.worker_concurrency
        running: set[asyncio.Task[None]] = set()
        total = 0
        idle_since: float | None = None
        while True:
            rows: list[Any] = []
            free = limit - len(running)
            if free > 0:
                async with state.db.pool.acquire() as conn:
                    rows = await conn.fetch(claim_sql, min(free, batch), state.worker_id)
                for r in rows:
                    claimed = ClaimedJob(
                        id=r["id"], kind=r["kind"], payload=r["payload"],
                        attempt=r["attempts"], max_attempts=r["max_attempts"],
                        request_id=r["request_id"],
                    )  # fmt: skip
                    t = asyncio.create_task(run_one(ctx, claimed, completes))
                    running.add(t)
                    t.add_done_callback(running.discard)
                total += len(rows)
            if rows and free - len(rows) > 0:
                idle_since = None
                continue  # more may be due: claim again while there is room
            if running:
                idle_since = None
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since >= linger_ms / 1000:
                return total
            await asyncio.sleep(0.005)

    return drain_jobs


def run_ours_pg_drain(settings: Any) -> int:
    from arq.worker import func

    from shared.logs import configure_logging
    from worker import main as worker_main

    configure_logging(settings)
    runner = worker_main.build_runner(settings)
    runner._options["functions"].append(
        func(
            cast(Any, pg_drain_task()),
            name="drain_jobs",
            timeout=3600,
            keep_result=0,
            max_tries=1000,
        )
    )
    runner.worker = runner._new_worker()
    runner.run()
    return 0


def patch_no_pool_reset() -> None:
    import asyncpg

    create_pool = asyncpg.create_pool

    async def no_reset(conn: Any) -> None:
        return None

    def create_pool_without_reset(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("reset", no_reset)
        return create_pool(*args, **kwargs)

    asyncpg.create_pool = create_pool_without_reset  # shared.db.database calls it at connect


def run_ours(args: argparse.Namespace) -> int:
    from shared.settings import SettingsError, exit_on_settings_error, load_settings
    from worker import main as worker_main
    from worker import tasks
    from worker.handlers import HANDLERS

    HANDLERS["bench"] = bench_noop  # on_startup puts this very dict in ctx["handlers"]
    if args.poll_delay is not None:
        worker_main.POLL_DELAY_SECONDS = args.poll_delay
    if args.audit_batch is not None:
        tasks.AUDIT_BATCH = args.audit_batch
    if args.drain_linger_ms:
        patch_drain_linger(args.drain_linger_ms)
    if args.drain_follow_up_ms:
        patch_drain_follow_up(args.drain_follow_up_ms)
    if args.batched_db:
        patch_batched_db()
    if args.no_pool_reset:
        patch_no_pool_reset()
    if args.quiet_job_log:
        logging.getLogger("stockroom.worker").setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as exc:
        exit_on_settings_error(exc)
        raise
    if args.pg_drain:
        return run_ours_pg_drain(settings)
    return worker_main.run(settings)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    raw = sub.add_parser("raw")
    raw.add_argument("--queue", required=True)
    raw.add_argument("--poll-delay", type=float, required=True)
    raw.add_argument("--max-jobs", type=int, required=True)
    ours = sub.add_parser("ours")
    ours.add_argument("--poll-delay", type=float)
    ours.add_argument("--audit-batch", type=int)
    ours.add_argument("--drain-linger-ms", type=float, default=0)
    ours.add_argument("--drain-follow-up-ms", type=float, default=0)
    ours.add_argument("--batched-db", action="store_true")
    ours.add_argument("--no-pool-reset", action="store_true")
    ours.add_argument("--quiet-job-log", action="store_true")
    ours.add_argument("--pg-drain", action="store_true")
    args = parser.parse_args()
    return run_raw(args) if args.mode == "raw" else run_ours(args)


if __name__ == "__main__":
    sys.exit(main())
