#!/usr/bin/env python3
"""Pickup latency of an idle worker (enqueue → job start), in one command:
``.venv/bin/python bench/worker_latency.py`` (or ``bench/worker_latency.sh``).

Jobs are sent one at a time, each after the previous one finished and a random pause of
20 ms + up to max(poll_delay, 20 ms) (so that sends fall at random points of the worker's poll
cycle). Four paths, one worker
process each, in the same run:

1. audit (ours): what the API does for a mutation — a transaction writes the audit event's
   job row (``shared.audit.events.record_event``), commits, then ``Queue.dispatch`` kicks
   ``drain_audit``. Worker: ``stockroom worker`` itself. Start = ``jobs.started_at`` (the drain
   transaction's ``now()``).
2. durable job (ours): a job of the bench-only kind ``bench`` written by ``create_job`` in a
   transaction, then ``Queue.dispatch`` after the commit, as the API does (the hand-over to
   ARQ as ``<queue>:<job id>:0``). Worker: ``bench/worker_proc.py ours`` (=
   ``worker.main.run`` + a no-op handler for ``bench``: a new kind needs nothing else to be
   handed to ARQ and run). Start = ``jobs.started_at`` (the claim's ``now()``, i.e. the ARQ
   function holds the job's lease: the handler starts next).
3. raw ARQ, ``poll_delay`` as ours (0.01 s), a trivial function that records ``time.time()``
   on entry.
4. raw ARQ with ARQ's default ``poll_delay`` 0.5 s (fewer jobs: each waits ~250 ms).

t0 is taken after the commit (just before the Redis enqueue, for audit and raw ARQ), with the same clock as
PostgreSQL's ``now()`` (same host). Also printed: enqueue → finished (the audit entry or job
result is committed), and the idle worker's CPU use (the cost of a short poll delay).

Targets (issue 12): pickup p50 ≤ 20 ms and p99 ≤ 60 ms for the durable job; p50 ≤ 20 ms for
the audit path.
Exit status 0 when the targets are met, 3 when one is missed, 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from bench.worker_common import (
    BenchError,
    Stack,
    install_budget,
    log,
    machine_note,
    percentile,
    proc_cpu_seconds,
    run_bench,
    table,
)
from shared.audit.events import record_event
from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job
from shared.queue import Queue

TARGET_MEDIAN_MS = 20.0
TARGET_P99_MS = 60.0
OUR_POLL_DELAY = 0.01  # worker.main.POLL_DELAY_SECONDS
ARQ_DEFAULT_POLL_DELAY = 0.5


class BenchKind(StrEnum):
    """The bench-only job kind (``bench/worker_proc.py`` registers a no-op handler)."""

    bench = "bench"


@dataclass
class Series:
    name: str
    poll_delay: float
    pickup_ms: list[float]
    done_ms: list[float]
    idle_cpu_pct: float
    target: bool  # is the median target for this row
    target_p99_ms: float | None = None


async def idle_cpu(pid: int, seconds: float = 2.0) -> float:
    cpu0 = proc_cpu_seconds([pid])
    await asyncio.sleep(seconds)
    return 100 * (proc_cpu_seconds([pid]) - cpu0) / seconds


async def pause(poll_delay: float) -> None:
    """A random idle gap longer than the poll cycle: the next send lands at a random phase of
    the worker's poll loop (a fixed gap would lock onto it: with poll_delay 0.5 s and a 30 ms
    gap every job would wait ~470 ms)."""
    await asyncio.sleep(random.uniform(0.02, 0.02 + max(poll_delay, 0.02)))


async def wait_finished(db: Database, job_id: uuid.UUID, timeout: float = 10) -> Any:
    """Poll the job row (every 3 ms) until it is finished; the timings come from the row, so
    the poll interval only costs CPU, it does not change the figures."""
    deadline = time.monotonic() + timeout
    async with db.pool.acquire() as conn:
        while time.monotonic() < deadline:
            row = await conn.fetchrow(
                "SELECT status, extract(epoch FROM started_at)::float8 AS started,"
                " extract(epoch FROM finished_at)::float8 AS finished FROM jobs WHERE id = $1",
                job_id,
            )
            if row is not None and row["status"] in ("complete", "failed", "cancelled"):
                if row["status"] != "complete":
                    raise BenchError(f"job {job_id} ended {row['status']}")
                return row
            await asyncio.sleep(0.003)
    raise BenchError(f"job {job_id} did not finish within {timeout:.0f} s")


async def ours_audit(stack: Stack, n: int, pid: int) -> Series:
    db = await Database.connect(stack.db_url, pool_size=4)
    queue = Queue.from_url(stack.redis_url, stack.queue_name)
    actor = Actor(key_id=None, key_name="bench", request_id=None)
    try:
        cpu = await idle_cpu(pid)
        pickup, done = [], []
        for i in range(n):
            async with db.transaction() as conn:
                uow = UnitOfWork(conn, actor)
                job_id = await record_event(uow, "bench.ping", f"bench:{i}", [], {"i": i})
            t0 = time.time()
            await queue.dispatch(uow.new_jobs)
            row = await wait_finished(db, job_id)
            pickup.append(1000 * (row["started"] - t0))
            done.append(1000 * (row["finished"] - t0))
            await pause(OUR_POLL_DELAY)
        async with db.pool.acquire() as conn:
            entries = await conn.fetchval("SELECT count(*) FROM audit_entries")
        if entries != n:
            raise BenchError(f"{n} audit events sent, {entries} audit entries written")
        return Series("audit → drain_audit (ours)", OUR_POLL_DELAY, pickup, done, cpu, True)
    finally:
        await queue.close()
        await db.close()


async def ours_durable_job(stack: Stack, n: int, pid: int) -> Series:
    db = await Database.connect(stack.db_url, pool_size=4)
    queue = Queue.from_url(stack.redis_url, stack.queue_name)
    kind = cast(JobKind, BenchKind.bench)
    try:
        cpu = await idle_cpu(pid)
        pickup, done = [], []
        for i in range(n):
            async with db.transaction() as conn:
                uow = UnitOfWork(conn, Actor.system(f"bench-{i}"))
                job_id = await create_job(uow, kind, {"i": i}, 5)
            t0 = time.time()
            await queue.dispatch(uow.new_jobs)  # as the API does after the commit
            row = await wait_finished(db, job_id)
            pickup.append(1000 * (row["started"] - t0))
            done.append(1000 * (row["finished"] - t0))
            await pause(OUR_POLL_DELAY)
        name = "durable job via ARQ, kind bench (ours)"
        return Series(name, OUR_POLL_DELAY, pickup, done, cpu, True, TARGET_P99_MS)
    finally:
        await queue.close()
        await db.close()


async def raw_arq(stack: Stack, queue_name: str, n: int, pid: int, poll_delay: float) -> Series:
    redis = ArqRedis(connection_pool=ConnectionPool.from_url(stack.redis_url))
    key = f"{queue_name}:stamps"
    try:
        cpu = await idle_cpu(pid)
        pickup = []
        for i in range(n):
            t0 = time.time()
            await redis.enqueue_job(
                "stamp", key, _job_id=f"{queue_name}:{i}", _queue_name=queue_name
            )
            popped = await redis.blpop([key], timeout=10)  # type: ignore[misc]
            if popped is None:
                raise BenchError(f"raw ARQ job {i} did not start within 10 s")
            pickup.append(1000 * (float(popped[1]) - t0))
            await pause(poll_delay)
        return Series("raw ARQ, trivial function", poll_delay, pickup, [], cpu, False)
    finally:
        await redis.aclose()


def fmt(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"


def report(series: list[Series]) -> tuple[str, bool]:
    rows = []
    ok = True
    for s in series:
        median = percentile(s.pickup_ms, 50)
        p99 = percentile(s.pickup_ms, 99)
        passed = median <= TARGET_MEDIAN_MS and (s.target_p99_ms is None or p99 <= s.target_p99_ms)
        if s.target:
            ok = ok and passed
        rows.append(
            [
                s.name,
                f"{s.poll_delay:g}",
                len(s.pickup_ms),
                fmt(median),
                fmt(percentile(s.pickup_ms, 90)),
                fmt(percentile(s.pickup_ms, 99)),
                fmt(max(s.pickup_ms)),
                fmt(percentile(s.done_ms, 50)),
                fmt(percentile(s.done_ms, 99)),
                f"{s.idle_cpu_pct:.1f}",
                (
                    f"p50 ≤ {TARGET_MEDIAN_MS:g} ms"
                    + (f", p99 ≤ {s.target_p99_ms:g} ms" if s.target_p99_ms else "")
                    if s.target
                    else "(reference)"
                ),
                ("PASS" if passed else "FAIL") if s.target else "-",
            ]
        )
    headers = [
        "path", "poll_delay s", "jobs", "pickup p50 ms", "p90", "p99", "max",
        "finished p50 ms", "p99", "idle CPU %", "target", "result",
    ]  # fmt: skip
    return table(headers, rows), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per path (ours, raw tuned)")
    parser.add_argument(
        "--default-jobs", type=int, default=60, help="jobs for raw ARQ at poll_delay 0.5 s"
    )
    parser.add_argument("--budget", type=int, default=175, help="stop after this many seconds")
    args = parser.parse_args(argv)
    install_budget(args.budget)
    stack = Stack(prefix="wlat")
    series: list[Series] = []

    def measure() -> bool:
        log(machine_note())
        stack.create_database()

        log(f"audit path: stockroom worker, {args.jobs} jobs")
        worker = stack.start_ours("stockroom-worker", handler=False)
        stack.wait_ours_ready([worker])
        time.sleep(1.0)
        series.append(asyncio.run(ours_audit(stack, args.jobs, worker.pid)))
        stack.stop(worker)

        log(f"durable-job path: bench worker, {args.jobs} jobs")
        worker = stack.start_ours("bench-worker")
        stack.wait_ours_ready([worker])
        time.sleep(1.0)
        series.append(asyncio.run(ours_durable_job(stack, args.jobs, worker.pid)))
        stack.stop(worker)

        for poll_delay, n in (
            (OUR_POLL_DELAY, args.jobs),
            (ARQ_DEFAULT_POLL_DELAY, args.default_jobs),
        ):
            raw_queue = f"{stack.queue_name}-raw-{poll_delay:g}"
            log(f"raw ARQ: poll_delay {poll_delay:g}, {n} jobs")
            raw = stack.start_raw(
                f"raw-{poll_delay:g}", raw_queue, poll_delay=poll_delay, max_jobs=50
            )
            stack.wait_raw_ready(raw_queue, [raw])
            time.sleep(0.5)
            series.append(asyncio.run(raw_arq(stack, raw_queue, n, raw.pid, poll_delay)))
            stack.stop(raw)

        text, ok = report(series)
        print()
        print("Pickup latency, idle worker (enqueue → job start), one job at a time")
        print(f"machine: {machine_note()}")
        print(text)
        print(
            "pickup = jobs.started_at (claim / drain transaction now()) - t0 taken after the "
            "commit, before the Redis enqueue; finished = jobs.finished_at - t0."
        )
        return ok

    return run_bench(stack, measure)


if __name__ == "__main__":
    sys.exit(main())
