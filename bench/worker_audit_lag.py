#!/usr/bin/env python3
"""Audit lag under load, in one command: ``.venv/bin/python bench/worker_audit_lag.py``
(or ``bench/worker_audit_lag.sh``).

A fresh database (migrate, ``stockroom seed --products 10000 --locations 1``, an admin key),
``stockroom api`` and ONE ``stockroom worker``; then restocks at full rate with wrk and the
restock benchmark's own script (``bench/restock.lua``, read-only: random SKUs, a unique
Idempotency-Key per request) for ``--duration`` seconds (default 30) after a short warm-up.

Measured:
- lag per audit event = ``jobs.finished_at - jobs.created_at`` of its ``audit`` job (the
  mutation's transaction time → the drain transaction that wrote its audit entry), for every
  event created during the measured run: p50 / p90 / p99 / max, and how many took > 1 s;
- the backlog (queued audit jobs) sampled every 0.5 s during the run (mean, max), at the end
  of the run, and the time from the end of the run until it is empty;
- the worker's drains from its JSON log ("audit entries written"): how many, events per drain;
- correctness: every audit job complete, exactly one audit entry per audit job.

Two more phases, same worker (reference rows, no target):
- synthetic: audit events written by the bench exactly as a mutation's unit of work does
  (transaction + ``record_event``, then ``Queue.dispatch``; ``--synthetic-per-tx`` events per
  transaction, default 4, like a small batch), 16 writers paced to ``--synthetic-rate``
  (default 1,500 events/s, the issue's reference API rate) for 10 s: the worker's audit
  capacity, whatever rate this machine's API reaches;
- gap probe: ``--gap-probe`` pairs of events (B 0-25 ms after A, then quiet until both are
  written). A wake-up that lands while A's ``drain_audit`` is finishing is dropped by ARQ's
  job-id dedup (the job key lives until ARQ's finish_job) and B waits for the relay cron
  (pending > 1 s, every 1 s): the coalescing gap, counted in the "> 1 s" column.

``--worker-options "..."`` runs ``bench/worker_proc.py ours ...`` instead of ``stockroom
worker``: the same worker with one changed knob, e.g. ``--audit-batch 1000``,
``--drain-linger-ms 20`` or ``--drain-follow-up-ms 20``.

Targets (issue 4, Performance): backlog at the end drains within 5 s; lag p99 ≤ 1 s.
Exit status 0 when the targets are met, 3 when one is missed, 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx

from bench.worker_common import (
    BENCH,
    STOCKROOM,
    BenchError,
    Proc,
    Stack,
    install_budget,
    log,
    machine_note,
    percentile,
    proc_cpu_seconds,
    table,
)
from shared.audit.events import record_event
from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.embedded import free_port
from shared.queue import Queue

TARGET_DRAIN_SECONDS = 5.0
TARGET_LAG_P99_SECONDS = 1.0


@dataclass
class Phase:
    name: str
    started: float = 0.0
    ended: float = 0.0
    requests_ok: int = 0
    rps: float = 0.0
    http_p99_ms: float = float("nan")
    backlog_samples: list[int] = field(default_factory=list)
    backlog_end: int = 0
    drain_seconds: float = float("nan")
    lags: list[float] = field(default_factory=list)
    drains: list[int] = field(default_factory=list)
    worker_cpu_pct: float = float("nan")


def parse_bench_line(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("BENCH "):
            values: dict[str, Any] = {}
            for item in line.split()[1:]:
                key, _, raw = item.partition("=")
                try:
                    values[key] = float(raw)
                except ValueError:
                    values[key] = raw
            return values
    raise BenchError("wrk printed no BENCH line:\n" + output[-2000:])


async def backlog(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE kind = 'audit' AND status = 'queued'"
    )
    return count


def drains_in_log(proc: Proc, offset: int) -> tuple[list[int], int]:
    """Event counts of the "audit entries written" lines after byte ``offset``."""
    counts = []
    with open(proc.log_path, "rb") as f:
        f.seek(offset)
        data = f.read()
    for line in data.splitlines():
        if b"audit entries written" in line:
            with contextlib.suppress(ValueError, KeyError):
                counts.append(int(json.loads(line)["count"]))
    return counts, offset + len(data)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stack = Stack(prefix="wlag")
        self.port = 0
        self.api: Proc | None = None
        self.worker: Proc | None = None
        self.sku_prefix = ""
        self.api_key = ""
        self.log_offset = 0

    def setup(self) -> None:
        s = self.stack
        s.create_database()
        out = s.run_cmd(
            [STOCKROOM, "seed", "--products", str(self.args.products), "--locations", "1"],
            timeout=90,
            what="stockroom seed",
        )
        self.sku_prefix = json.loads(out.strip().splitlines()[-1])["sku_prefix"]
        out = s.run_cmd(
            [STOCKROOM, "keys", "create", "--name", "bench", "--scopes", "admin", "--json"],
            timeout=30,
            what="stockroom keys create",
        )
        self.api_key = json.loads(out.strip().splitlines()[-1])["key"]
        self.port = free_port()
        self.api = s.start(
            "api",
            [STOCKROOM, "api", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.args.api_workers)],
        )  # fmt: skip
        if self.args.worker_options is None:
            self.worker = s.start_ours("worker", handler=False)
        else:
            self.worker = s.start_ours("worker", options=shlex.split(self.args.worker_options))
        deadline = time.monotonic() + 30
        while True:
            s.check_alive(self.api, self.worker)
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the API was not ready within 30 s:\n" + self.api.tail())
            time.sleep(0.2)
        s.wait_ours_ready([self.worker])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wrk_cmd(self, tag: str, seconds: float, connections: int) -> list[str]:
        return [
            "wrk", f"-t{self.args.threads}", f"-c{connections}", f"-d{seconds:g}s",
            "--timeout", "10s", "--latency", "-s", str(BENCH / "restock.lua"), self.base_url,
            "--", tag, "random", str(self.args.products), self.sku_prefix, self.api_key, "5",
            str(self.stack.workdir / f"seen-{tag}.txt"),
        ]  # fmt: skip

    async def wait_empty(self, conn: asyncpg.Connection, timeout: float) -> float:
        """Seconds until no audit job is queued (NaN after ``timeout``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if await backlog(conn) == 0:
                return time.monotonic() - t0
            await asyncio.sleep(0.02)
        return float("nan")

    async def finish_phase(self, conn: asyncpg.Connection, phase: Phase) -> None:
        phase.backlog_end = await backlog(conn)
        phase.drain_seconds = await self.wait_empty(conn, 60)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM finished_at - created_at)::float8 AS lag FROM jobs"
            " WHERE kind = 'audit' AND created_at >= to_timestamp($1)"
            " AND created_at < to_timestamp($2) AND status = 'complete'",
            phase.started,
            phase.ended,
        )
        phase.lags = [r["lag"] for r in rows]
        assert self.worker is not None
        await asyncio.sleep(0.2)
        phase.drains, self.log_offset = drains_in_log(self.worker, self.log_offset)

    async def full_rate(self, conn: asyncpg.Connection) -> Phase:
        assert self.worker is not None
        log(f"warm-up: {self.args.warmup} s of restocks")
        proc = await asyncio.create_subprocess_exec(
            *self.wrk_cmd("lag-warm", self.args.warmup, self.args.connections),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await proc.communicate()
        await self.wait_empty(conn, 60)
        _, self.log_offset = drains_in_log(self.worker, 0)

        phase = Phase("full rate")
        log(f"full rate: {self.args.duration} s of restocks, {self.args.connections} connections")
        cpu0 = proc_cpu_seconds([self.worker.pid])
        phase.started = time.time()
        proc = await asyncio.create_subprocess_exec(
            *self.wrk_cmd("lag-run", self.args.duration, self.args.connections),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        communicate = asyncio.ensure_future(proc.communicate())
        while not communicate.done():
            await asyncio.wait([communicate], timeout=0.5)
            if not communicate.done():
                phase.backlog_samples.append(await backlog(conn))
        phase.ended = time.time()
        phase.worker_cpu_pct = (
            100 * (proc_cpu_seconds([self.worker.pid]) - cpu0) / (phase.ended - phase.started)
        )
        output = communicate.result()[0].decode(errors="replace")
        if proc.returncode != 0:
            raise BenchError(f"wrk failed ({proc.returncode}):\n{output[-2000:]}")
        stats = parse_bench_line(output)
        phase.requests_ok = int(stats["n201"])
        phase.rps = stats["n201"] / (stats["duration_us"] / 1e6)
        phase.http_p99_ms = stats["p99_us"] / 1000
        if stats["non201"]:
            log(f"note: {int(stats['non201'])} non-201 answers ({stats['statuses']})")
        await self.finish_phase(conn, phase)
        return phase

    async def _event(self, db: Database, queue: Queue, i: int, count: int = 1) -> None:
        """``count`` audit events exactly as a mutation's unit of work writes them, in one
        transaction, then the API's after-commit dispatch (``Queue.dispatch`` → kick
        ``drain_audit``)."""
        actor = Actor(key_id=None, key_name="bench", request_id=f"bench-{i}")
        async with db.transaction() as conn:
            uow = UnitOfWork(conn, actor)
            for k in range(count):
                await record_event(uow, "bench.event", f"bench:{i}:{k}", [], {"i": i})
        await queue.dispatch(uow.new_jobs)

    async def synthetic(self, conn: asyncpg.Connection) -> Phase:
        """Audit events at a fixed rate from 16 concurrent writers (no HTTP): the worker's
        capacity at the issue's reference rate, whatever this machine's API can take."""
        rate, seconds = self.args.synthetic_rate, self.args.synthetic_seconds
        per_tx = self.args.synthetic_per_tx
        phase = Phase(f"synthetic {rate:,.0f} events/s, {per_tx}/tx")
        log(f"synthetic: {seconds:g} s of audit events at {rate:,.0f}/s (16 writers)")
        db = await Database.connect(self.stack.db_url, pool_size=16)
        queue = Queue.from_url(self.stack.redis_url, self.stack.queue_name)
        assert self.worker is not None
        cpu0 = proc_cpu_seconds([self.worker.pid])
        counter = iter(range(10**9))
        phase.started = time.time()
        t0 = time.monotonic()
        sent = 0

        async def writer() -> None:
            nonlocal sent
            while True:
                i = next(counter)
                due = t0 + i * per_tx / rate
                if due - t0 >= seconds:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._event(db, queue, i, per_tx)
                sent += per_tx

        async def sampler() -> None:
            while True:
                await asyncio.sleep(0.5)
                phase.backlog_samples.append(await backlog(conn))

        sampling = asyncio.create_task(sampler())
        try:
            await asyncio.gather(*(writer() for _ in range(16)))
        finally:
            sampling.cancel()
            await queue.close()
            await db.close()
        phase.ended = time.time()
        phase.requests_ok = sent
        phase.rps = sent / (phase.ended - phase.started)
        phase.worker_cpu_pct = (
            100 * (proc_cpu_seconds([self.worker.pid]) - cpu0) / (phase.ended - phase.started)
        )
        await self.finish_phase(conn, phase)
        return phase

    async def gap_probe(self, conn: asyncpg.Connection) -> Phase:
        """Pairs of events: A, then B 0-25 ms later, then quiet until both are written. When
        B's wake-up lands while A's drain is finishing, ARQ drops it (the drain's job id still
        exists) and B waits for the relay cron (≥ 1 s): the coalescing gap."""
        phase = Phase("gap probe (pairs, then quiet)")
        log(f"gap probe: {self.args.gap_probe} pairs of events")
        db = await Database.connect(self.stack.db_url, pool_size=2)
        queue = Queue.from_url(self.stack.redis_url, self.stack.queue_name)
        phase.started = time.time()
        try:
            for n in range(self.args.gap_probe):
                await self._event(db, queue, 2 * n)
                await asyncio.sleep(random.uniform(0, 0.025))
                await self._event(db, queue, 2 * n + 1)
                t0 = time.monotonic()
                while await backlog(conn) and time.monotonic() - t0 < 5:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.03)
        finally:
            await queue.close()
            await db.close()
        phase.ended = time.time()
        phase.requests_ok = 2 * self.args.gap_probe
        phase.rps = phase.requests_ok / (phase.ended - phase.started)
        await self.finish_phase(conn, phase)
        return phase

    async def check(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status <> 'complete') AS open,"
            " count(*) AS jobs, (SELECT count(*) FROM audit_entries) AS entries"
            " FROM jobs WHERE kind = 'audit'"
        )
        assert row is not None
        if row["open"] or row["jobs"] != row["entries"]:
            raise BenchError(
                f"audit: {row['jobs']} audit jobs ({row['open']} not complete),"
                f" {row['entries']} audit entries"
            )
        log(f"check: {row['jobs']} audit jobs complete, {row['entries']} audit entries")

    async def run(self) -> list[Phase]:
        conn = await asyncpg.connect(self.stack.db_url)
        try:
            phases = [await self.full_rate(conn)]
            if self.args.synthetic_rate:
                phases.append(await self.synthetic(conn))
            if self.args.gap_probe:
                phases.append(await self.gap_probe(conn))
            await self.check(conn)
            return phases
        finally:
            await conn.close()


def fmt_ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{1000 * seconds:,.0f}"


def report(phases: list[Phase]) -> tuple[str, bool]:
    rows = []
    ok = True
    for p in phases:
        lag_p99 = percentile(p.lags, 99)
        lag_ok = lag_p99 <= TARGET_LAG_P99_SECONDS
        drain_ok = p.drain_seconds <= TARGET_DRAIN_SECONDS
        target = p.name == "full rate"
        if target:
            ok = ok and lag_ok and drain_ok
        samples = p.backlog_samples or [0]
        drains = p.drains or [0]
        rows.append(
            [
                p.name,
                f"{p.rps:,.0f}",
                len(p.lags),
                fmt_ms(percentile(p.lags, 50)),
                fmt_ms(percentile(p.lags, 90)),
                fmt_ms(lag_p99),
                fmt_ms(max(p.lags) if p.lags else float("nan")),
                sum(1 for x in p.lags if x > 1.0),
                f"{sum(samples) / len(samples):,.0f} / {max(samples):,}",
                p.backlog_end,
                "-" if p.drain_seconds != p.drain_seconds else f"{p.drain_seconds:.2f}",
                f"{len(p.drains)} / {sum(drains) / len(drains):,.0f} / {max(drains):,}",
                "-" if p.worker_cpu_pct != p.worker_cpu_pct else f"{p.worker_cpu_pct:.0f}",
                (
                    f"{'PASS' if lag_ok else 'FAIL'} (p99 ≤ 1 s), "
                    f"{'PASS' if drain_ok else 'FAIL'} (drain ≤ 5 s)"
                )
                if target
                else "(reference)",
            ]
        )
    headers = [
        "phase", "events/s", "events", "lag p50 ms", "p90", "p99", "max", "> 1 s",
        "backlog mean / max", "backlog at end", "drain s", "drains / mean / max events",
        "worker CPU %", "targets",
    ]  # fmt: skip
    return table(headers, rows), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds at full rate")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument(
        "--worker-options",
        help='run "bench/worker_proc.py ours OPTIONS" instead of stockroom worker',
    )
    parser.add_argument(
        "--synthetic-rate",
        type=float,
        default=1500,
        help="events/s of the synthetic phase (0: skip)",
    )
    parser.add_argument("--synthetic-seconds", type=float, default=10)
    parser.add_argument(
        "--synthetic-per-tx",
        type=int,
        default=4,
        help="events per transaction (and per wake-up) in the synthetic phase: a Python"
        " load generator on a small machine cannot commit 1,500 transactions/s itself",
    )
    parser.add_argument(
        "--gap-probe", type=int, default=100, help="pairs of events in the gap probe (0: skip)"
    )
    parser.add_argument("--budget", type=int, default=175, help="stop after this many seconds")
    args = parser.parse_args(argv)
    install_budget(args.budget)
    started = time.monotonic()
    if shutil.which("wrk") is None:
        log("installing wrk (apt-get)")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, check=False)
    bench = Bench(args)
    status = 1
    try:
        if shutil.which("wrk") is None:
            raise BenchError("wrk is not installed (apt-get install -y wrk)")
        log(machine_note())
        bench.setup()
        phases = asyncio.run(bench.run())
        text, ok = report(phases)
        worker = args.worker_options
        print()
        print(
            "Audit lag under load: one worker"
            + (f" (bench/worker_proc.py ours {worker})" if worker else " (stockroom worker)")
            + f", API with {args.api_workers} uvicorn worker(s), wrk -c{args.connections}"
        )
        print(f"machine: {machine_note()}")
        print(text)
        print(
            "lag = jobs.finished_at - jobs.created_at of each audit event created during the"
            " phase; drain s = end of the phase → no audit job queued."
        )
        status = 0 if ok else 3
    except BenchError as exc:
        log(f"FAILED: {exc}")
        status = 1
    finally:
        bench.stack.cleanup(keep_logs=status == 1)
    log(f"finished in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
