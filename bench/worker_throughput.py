#!/usr/bin/env python3
"""Worker throughput of trivial jobs, ours next to raw ARQ, in one command:
``.venv/bin/python bench/worker_throughput.py`` (or ``bench/worker_throughput.sh``).

One measurement: make N jobs ready at once and time until the last one finished. Jobs/s =
N / that time.

- raw ARQ: the job records written with one pipeline, then one ZADD makes them visible (the
  records ``ArqRedis.enqueue_job`` writes, without its per-job WATCH round trips, so that
  filling the queue is not what is measured); done when ZCARD (polled every 10 ms) is 0 —
  ARQ removes a job from the queue when it finishes it. A raw ``arq.Worker`` whose function
  does nothing, ``keep_result=0``, ARQ's per-job logs off, ``max_jobs`` 50 and ``poll_delay``
  0.01 s like ours: "tuned raw ARQ".
- ours: jobs written as the API writes them — ``shared.jobs.outbox.create_job`` in one
  transaction, then ``Queue.dispatch`` after the commit (each job handed to ARQ as its own
  ARQ job); the clock starts just before the COMMIT, so the hand-over is measured. The
  worker is ``worker.main.run`` as ``stockroom worker`` runs it (``bench/worker_proc.py
  ours``, ``WORKER_CONCURRENCY`` 50) with a no-op handler for the bench-only kind ``bench``:
  ARQ's start of each job, the claim under a lease (claims of one tick in one statement),
  handler, batched completion, the per-job log line and metrics. Done when no ``bench`` job is queued
  or in progress (polled every 10 ms); the time is the last ``finished_at``. The bench checks
  every row ends ``complete`` with 1 attempt.
- a variant of ours (``--no-variants`` skips it), not in the product: ``--quiet-job-log``
  (no INFO line per job): what the per-job log line costs.

Configurations, each with its own queue and worker process(es), all started up front and
paused with SIGSTOP while another one is measured (on a 2-CPU machine an idle worker's polling
would otherwise tax the one being measured). Rounds alternate the configurations of one
process count (raw, ours, variant, raw, ours, ...), N is sized to ~``--seconds`` from the
previous round, and the best round of each configuration is reported (the machine is shared:
the best round is the least disturbed one; every round's figure is printed too).

Also printed per job: CPU of the worker process(es), of the PostgreSQL backends of this
database, and of Redis (``INFO cpu``: a shared server, approximate): where the time goes.

Target (issue 12): ours ≥ 0.5x raw tuned ARQ per process (our claim and completion cost on
top of ARQ's own).
Exit status 0 when the targets are met, 3 when one is missed, 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job

from bench.worker_common import (
    BenchError,
    Proc,
    Stack,
    install_budget,
    log,
    machine_note,
    proc_cpu_seconds,
    run_bench,
    table,
    write_jobs,
)
from shared.db.database import Database
from shared.jobs.kinds import JobKind
from shared.queue import Queue

TARGET_VS_RAW = 0.5
POLL_DELAY = 0.01  # worker.main.POLL_DELAY_SECONDS
MAX_JOBS = 50  # shared.settings.Settings.worker_concurrency default


@dataclass
class Config:
    name: str
    kind: str  # "raw" | "ours"
    processes: int
    options: list[str] = field(default_factory=list)
    variant: bool = False
    queue: str = ""
    procs: list[Proc] = field(default_factory=list)
    next_n: int = 0


@dataclass
class Result:
    config: Config
    jobs: int
    seconds: float
    worker_cpu: float
    pg_cpu: float
    redis_cpu: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def per_process(self) -> float:
        return self.rate / self.config.processes


async def pg_backend_cpu(admin_url: str, db_name: str) -> dict[int, float]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            db_name,
        )
    finally:
        await conn.close()
    return {r[0]: proc_cpu_seconds([r[0]]) for r in rows}


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def fill(
    client: aioredis.Redis, queue: str, jobs: list[tuple[str, str, tuple[Any, ...]]]
) -> float:
    """Write the job records, then make them visible with one ZADD; returns the time just
    before the ZADD (the start of the measurement)."""
    now_ms = int(time.time() * 1000)
    for i in range(0, len(jobs), 5000):
        pipe = client.pipeline(transaction=False)
        for job_id, function, args in jobs[i : i + 5000]:
            data = serialize_job(function, args, {}, None, now_ms)
            pipe.psetex(job_key_prefix + job_id, expires_extra_ms, data)
        await pipe.execute()
    started = time.time()
    await client.zadd(queue, {job_id: now_ms for job_id, _, _ in jobs})
    return started


async def remaining(client: aioredis.Redis, queue: str) -> int:
    """Jobs left in the queue, not counting our worker's own cron ticks (a worker paused
    with SIGSTOP can leave a few overdue ones behind)."""
    count = int(await client.zcard(queue))
    if count <= 200:
        members = await client.zrange(queue, 0, -1)
        count = sum(1 for m in members if b":cron:" not in m)
    return count


class BenchKind(StrEnum):
    """The bench-only job kind (``bench/worker_proc.py`` registers a no-op handler)."""

    bench = "bench"


async def measure(stack: Stack, config: Config, tag: str, n: int, max_seconds: float) -> Result:
    client = aioredis.Redis.from_url(stack.redis_url)
    db = await Database.connect(stack.db_url, pool_size=2)
    queue = Queue.from_url(stack.redis_url, config.queue)
    try:
        async with db.pool.acquire() as conn:
            ours = config.kind == "ours"
            transaction = conn.transaction()
            if ours:
                await transaction.start()
                uow = await write_jobs(conn, tag, [(cast(JobKind, BenchKind.bench), {})] * n)
            else:
                jobs = [(f"{config.queue}:{tag}:{i}", "noop", ()) for i in range(n)]
            pg0 = await pg_backend_cpu(stack.admin_url, stack.db_name)
            redis0 = await redis_cpu(client)
            cpu0 = proc_cpu_seconds(p.pid for p in config.procs)
            if ours:
                started = time.time()
                await transaction.commit()
                await queue.dispatch(uow.new_jobs)
            else:
                started = await fill(client, config.queue, jobs)
            left = n
            while True:
                await asyncio.sleep(0.01)
                if ours:
                    left = await conn.fetchval(
                        "SELECT count(*) FROM jobs"
                        " WHERE status IN ('queued', 'in_progress') AND kind = 'bench'"
                    )
                else:
                    left = await remaining(client, config.queue)
                elapsed = time.time() - started
                if left == 0 or elapsed >= max_seconds:
                    break
            if ours and left == 0:
                elapsed = await conn.fetchval(
                    "SELECT extract(epoch FROM max(finished_at))::float8 - $2 FROM jobs"
                    " WHERE request_id = $1",
                    tag,
                    started,
                )
            worker_cpu = proc_cpu_seconds(p.pid for p in config.procs) - cpu0
            redis_used = await redis_cpu(client) - redis0
            pg1 = await pg_backend_cpu(stack.admin_url, stack.db_name)
            pg_used = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
            stack.check_alive(*config.procs)
            if left:
                raise BenchError(
                    f"{config.name}: {left} of {n} jobs left after {max_seconds:.0f} s"
                    " (raise --max-seconds)"
                )
            if ours:
                bad = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE request_id = $1"
                    " AND NOT (status = 'complete' AND attempts = 1)",
                    tag,
                )
                if bad:
                    raise BenchError(f"{config.name}: {bad} of {n} jobs not complete in 1 attempt")
        return Result(config, n, elapsed, worker_cpu, pg_used, redis_used)
    finally:
        await client.aclose()
        await queue.close()
        await db.close()


def start(stack: Stack, config: Config, index: int) -> None:
    config.queue = f"{stack.queue_name}-{index}-{config.kind}{config.processes}"
    for i in range(config.processes):
        if config.kind == "raw":
            proc = stack.start_raw(
                f"{index}-raw-{i}", config.queue, poll_delay=POLL_DELAY, max_jobs=MAX_JOBS
            )
        else:
            proc = stack.start_ours(
                f"{index}-ours-{i}",
                options=config.options,
                STOCKROOM_QUEUE_NAME=config.queue,
                STOCKROOM_WORKER_CONCURRENCY=str(MAX_JOBS),
            )
        config.procs.append(proc)


def wait_ready(stack: Stack, config: Config) -> None:
    if config.kind == "raw":
        stack.wait_raw_ready(config.queue, config.procs)
    else:
        stack.wait_ours_ready(config.procs, queue=config.queue)


def run_group(
    stack: Stack, group: list[Config], first: int, args: argparse.Namespace
) -> list[list[Result]]:
    for offset, config in enumerate(group):
        start(stack, config, first + offset)
    for config in group:
        wait_ready(stack, config)
    for config in group:
        stack.pause(*config.procs)
    results: list[list[Result]] = [[] for _ in group]
    try:
        for round_no in range(args.rounds):
            for i, config in enumerate(group):
                n = config.next_n or args.first_jobs * config.processes
                stack.resume(*config.procs)
                time.sleep(0.3)
                try:
                    r = asyncio.run(measure(stack, config, f"r{round_no}", n, args.max_seconds))
                finally:
                    stack.pause(*config.procs)
                results[i].append(r)
                config.next_n = max(500, min(60000, int(r.rate * args.seconds)))
                log(
                    f"round {round_no + 1}: {config.name} x{config.processes}:"
                    f" {r.rate:,.0f} jobs/s ({n} in {r.seconds:.2f} s)"
                )
    finally:
        for config in group:
            for proc in config.procs:
                stack.stop(proc)
    return results


def report(best: list[tuple[Result, list[Result]]]) -> tuple[str, bool]:
    raw = {r.config.processes: r.per_process for r, _ in best if r.config.kind == "raw"}
    rows = []
    ok = True
    for r, rounds in best:
        c = r.config
        ratio = r.per_process / raw[c.processes] if c.processes in raw else float("nan")
        is_target = c.kind == "ours" and not c.variant
        passed = ratio >= TARGET_VS_RAW
        if is_target:
            ok = ok and passed
        rows.append(
            [
                c.name,
                c.processes,
                f"{r.rate:,.0f}",
                f"{r.per_process:,.0f}",
                "-" if c.kind == "raw" else f"{ratio:.2f}x",
                " ".join(f"{x.rate:,.0f}" for x in rounds),
                f"{1e6 * r.worker_cpu / r.jobs:,.0f}",
                f"{1e6 * r.pg_cpu / r.jobs:,.0f}",
                f"{1e6 * r.redis_cpu / r.jobs:,.0f}",
                f"≥ {TARGET_VS_RAW:.1f}x raw" if is_target else "(reference)",
                ("PASS" if passed else "FAIL") if is_target else "-",
            ]
        )
    headers = [
        "configuration", "procs", "jobs/s", "jobs/s/proc", "vs raw /proc", "rounds (jobs/s)",
        "worker CPU µs/job", "PG CPU µs/job", "Redis CPU µs/job", "target", "result",
    ]  # fmt: skip
    return table(headers, rows), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="target length of a round")
    parser.add_argument("--first-jobs", type=int, default=1000, help="jobs/process, round 1")
    parser.add_argument("--max-seconds", type=float, default=20, help="cap per round")
    parser.add_argument("--no-variants", action="store_true", help="skip the variants of ours")
    parser.add_argument("--budget", type=int, default=175, help="stop after this many seconds")
    args = parser.parse_args(argv)
    install_budget(args.budget)
    groups: list[list[Config]] = [
        [Config("raw ARQ, noop", "raw", 1), Config("ours, durable jobs", "ours", 1)],
        [Config("raw ARQ, noop", "raw", 2), Config("ours, durable jobs", "ours", 2)],
    ]
    if not args.no_variants:
        groups[0].append(
            Config("ours, no per-job log line", "ours", 1, ["--quiet-job-log"], variant=True)
        )
    stack = Stack(prefix="wthr")
    best: list[tuple[Result, list[Result]]] = []

    def measure() -> bool:
        log(machine_note())
        stack.create_database()
        index = 0
        for group in groups:
            for rounds in run_group(stack, group, index, args):
                best.append((max(rounds, key=lambda r: r.rate), rounds))
            index += len(group)
        text, ok = report(best)
        print()
        print(
            f"Worker throughput, trivial jobs (max_jobs {MAX_JOBS}, poll_delay {POLL_DELAY:g} s;"
            f" best of {args.rounds} alternating rounds; queue filled at once, time until done)"
        )
        print(f"machine: {machine_note()}")
        print(text)
        return ok

    return run_bench(stack, measure)


if __name__ == "__main__":
    sys.exit(main())
