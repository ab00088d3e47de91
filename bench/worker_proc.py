#!/usr/bin/env python3
"""Worker processes for the worker benchmarks (started by them; not for production).

``worker_proc.py ours [options]``
    Our worker exactly as ``stockroom worker`` builds it (``worker.main.run``: settings from
    ``STOCKROOM_*``, the ARQ lanes and task table, crons, the job runner's leases, heartbeat),
    plus a no-op handler for the bench-only job kind ``bench`` (registered in ``HANDLERS``,
    which is all a new kind needs to get its ARQ function) so that the durable-job path (ARQ's
    delivery, the claim under a lease, handler, batched completion) can be timed without a
    real job's work.
    Options change one module-level knob each, to measure a proposed setting without editing
    the product:
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
      --quiet-job-log    the per-job INFO line "job complete" is not written (logger
                         ``stockroom.worker`` at WARNING)

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
from pathlib import Path
from typing import Any

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


def run_ours(args: argparse.Namespace) -> int:
    from shared.settings import SettingsError, exit_on_settings_error, load_settings
    from worker import main as worker_main
    from worker import tasks
    from worker.handlers import HANDLERS

    HANDLERS["bench"] = bench_noop  # before build_runner: the kind gets its ARQ function
    if args.poll_delay is not None:
        worker_main.POLL_DELAY_SECONDS = args.poll_delay
    if args.audit_batch is not None:
        tasks.AUDIT_BATCH = args.audit_batch
    if args.drain_linger_ms:
        patch_drain_linger(args.drain_linger_ms)
    if args.drain_follow_up_ms:
        patch_drain_follow_up(args.drain_follow_up_ms)
    if args.quiet_job_log:
        logging.getLogger("stockroom.worker").setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as exc:
        exit_on_settings_error(exc)
        raise
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
    ours.add_argument("--quiet-job-log", action="store_true")
    args = parser.parse_args()
    return run_raw(args) if args.mode == "raw" else run_ours(args)


if __name__ == "__main__":
    sys.exit(main())
