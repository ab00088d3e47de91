#!/usr/bin/env python3
"""The reports benchmark, in one command: ``bench/reports.sh`` (or ``.venv/bin/python
bench/reports.py``).

From ONE run against this machine's PostgreSQL and Redis it prints, side by side:
- how long ``stockroom seed`` takes to make the data (100,000 products x 10 locations, 5 M
  movements; and a tenth of that);
- for valuation and movements reports, in CSV and XLSX: the report's time in a real worker
  process (the job's ``started_at`` → ``finished_at``) next to the bare SQL aggregate that
  feeds it (``psql -c "COPY (...) TO '/dev/null'"``, run just before it), and their ratio
  (best of ``--repeat`` runs of each, interleaved);
- the worker's peak RSS during each report, itself and with its child processes (the
  renderers), sampled from /proc every 50 ms; and the same at a tenth of the data;
- 4 queued valuation reports finished by 1 worker and by 2 workers (each worker running one
  report at a time: ``STOCKROOM_WORKER_CONCURRENCY=1``).
and one table with the ratios against the targets of the reports issue.

It makes databases of its own (dropped at the end, also on failure or Ctrl-C), uses a queue
name of its own (its Redis keys are deleted at the end), and stops itself after ``--budget``
seconds. Before each measured set a warm-up report runs, so the worker's chart renderer (a
long-lived child process) is up, as it is in a worker that has run a report before. RSS "with
children" includes that renderer and the report's converter.

Settings (environment): ``STOCKROOM_BENCH_DATABASE_URL`` (an admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``STOCKROOM_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``).

Exit status: 0 when every target is met, 3 when a performance target is missed, 1 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_common import BenchError, log, with_database  # noqa: E402
from shared.db.database import Database  # noqa: E402
from shared.db.unit_of_work import Actor, UnitOfWork  # noqa: E402
from shared.queue import Queue  # noqa: E402
from shared.reports import queries  # noqa: E402
from shared.reports import service as reports  # noqa: E402
from shared.reports.schemas import REPORT_REQUEST  # noqa: E402

STOCKROOM = ROOT / ".venv" / "bin" / "stockroom"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Targets of the reports issue ("Performance").
TARGET_CSV = 2.0
TARGET_XLSX = 3.0
TARGET_RSS_MB = 250.0
TARGET_RSS_SPREAD = 0.20
TARGET_SCALE_OUT = 0.6


def run(cmd: list[str], *, env: dict[str, str], timeout: float, what: str) -> str:
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise BenchError(f"{what} failed ({proc.returncode}):\n  " + "\n  ".join(tail))
    return proc.stdout


# --- memory ----------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class RssSampler:
    """Peak VmRSS of a process, alone and with its descendants, polled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_self_kb = 0
        self.peak_tree_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            own = _status_kb(self.pid, "VmRSS")
            tree = own + sum(_status_kb(p, "VmRSS") for p in _descendants(self.pid))
            self.peak_self_kb = max(self.peak_self_kb, own)
            self.peak_tree_kb = max(self.peak_tree_kb, tree)
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    scale: str
    case: str
    fmt: str
    rows: int
    size_mb: float
    sql_s: float
    report_s: float
    rss_self_mb: float
    rss_tree_mb: float

    @property
    def ratio(self) -> float:
        return self.report_s / self.sql_s if self.sql_s else float("inf")


@dataclass
class Bench:
    args: argparse.Namespace
    admin_url: str
    redis_url: str
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    databases: list[str] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    job_ids: list[uuid.UUID] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    seed_seconds: dict[str, float] = field(default_factory=dict)
    scale_out: dict[int, float] = field(default_factory=dict)
    scale_out_cpu: dict[int, float] = field(default_factory=dict)
    busy_before_run: float = 0.0

    @property
    def queue_name(self) -> str:
        return f"bench-reports-{self.run_id}"

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        env |= {
            "STOCKROOM_DATABASE_URL": database_url,
            "STOCKROOM_REDIS_URL": self.redis_url,
            "STOCKROOM_QUEUE_NAME": self.queue_name,
            "STOCKROOM_LOG_FORMAT": "json",
            "STOCKROOM_WORKER_CONCURRENCY": "1",
            "STOCKROOM_REPORT_MAX_BYTES": str(1 << 30),
        }
        return env | extra

    # -- databases and workers --

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def make_database(self, scale: str, products: int, movements: int) -> str:
        name = f"stockroom_bench_reports_{self.run_id}_{scale}"
        asyncio.run(self._admin(f'CREATE DATABASE "{name}"'))
        self.databases.append(name)
        url = with_database(self.admin_url, name)
        run([str(STOCKROOM), "migrate"], env=self.env(url), timeout=120, what="stockroom migrate")
        log(
            f"[{scale}] seeding {products:,} products x {self.args.locations} locations,"
            f" {movements:,} movements"
        )
        started = time.monotonic()
        out = run(
            [
                str(STOCKROOM),
                "seed",
                "--products",
                str(products),
                "--locations",
                str(self.args.locations),
                "--movements",
                str(movements),
            ],
            env=self.env(url),
            timeout=400,
            what="stockroom seed",
        )
        self.seed_seconds[scale] = time.monotonic() - started
        log(f"[{scale}] seeded in {self.seed_seconds[scale]:.1f} s: {out.strip()}")
        return url

    def drop_database(self, name: str) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.databases.remove(name)

    def start_worker(self, url: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(STOCKROOM), "worker"],
            env=self.env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(proc)
        time.sleep(0.1)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()

    # -- reports --

    async def request(self, db: Database, queue: Queue, body: dict[str, Any]) -> uuid.UUID:
        """Queue a report exactly as the API does: the service call in one transaction, then
        the hand-over to the queue."""
        request = REPORT_REQUEST.validate_python(body)
        async with db.transaction() as conn:
            uow = UnitOfWork(conn, Actor.system("bench-reports"), job_max_tries=1)
            job = await reports.request_report(uow, request)
        await queue.dispatch(uow.new_jobs)
        self.job_ids.append(job.id)
        return job.id

    async def wait(self, db: Database, job_ids: list[uuid.UUID], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            async with db.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT id, status, error, started_at, finished_at, result FROM jobs"
                    " WHERE id = ANY($1::uuid[])",
                    job_ids,
                )
            if all(r["status"] in ("complete", "failed", "cancelled") for r in rows):
                for r in rows:
                    if r["status"] != "complete":
                        raise BenchError(f"report {r['id']} {r['status']}: {r['error']}")
                return rows
            if time.monotonic() > deadline:
                raise BenchError(f"reports still running after {timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def bare_sql(self, url: str, body: dict[str, Any]) -> float:
        conn = await asyncpg.connect(url)
        try:
            definition = queries.definition(REPORT_REQUEST.validate_python(body))
            sql = await queries.inline(conn, definition.sql, definition.args)
        finally:
            await conn.close()
        started = time.monotonic()
        run(
            [
                "psql",
                url,
                "-X",
                "-q",
                "-c",
                f"COPY ({sql}) TO '/dev/null' WITH (FORMAT csv, HEADER)",
            ],
            env=dict(os.environ),
            timeout=600,
            what="psql COPY",
        )
        return time.monotonic() - started

    async def measure(self, scale: str, url: str, worker_pid: int) -> None:
        now = datetime.now(UTC)
        whole = {
            "since": (now - timedelta(days=92)).isoformat(),
            "until": (now + timedelta(days=1)).isoformat(),
        }
        month = {"since": (now - timedelta(days=30)).isoformat(), "until": now.isoformat()}
        cases = [
            ("valuation", "csv", {}),
            ("valuation", "xlsx", {}),
            ("movements", "csv", whole),
            ("movements 30 d", "xlsx", month),
        ]
        db = await Database.connect(url, pool_size=2)
        queue = Queue.from_url(self.redis_url, self.queue_name)
        try:
            warm = await self.request(db, queue, {"kind": "low_stock", "format": "csv"})
            await self.wait(db, [warm], timeout=120)
            for case, fmt, params in cases:
                body = {"kind": case.split()[0], "format": fmt, "params": params}
                # best of N for both, interleaved: this machine's other tenants come and go
                sql_runs, report_runs = [], []
                with RssSampler(worker_pid) as rss:
                    for _ in range(self.args.repeat):
                        sql_runs.append(await self.bare_sql(url, body))
                        job_id = await self.request(db, queue, body)
                        (row,) = await self.wait(db, [job_id], timeout=600)
                        report_runs.append((row["finished_at"] - row["started_at"]).total_seconds())
                m = Measurement(
                    scale=scale,
                    case=case,
                    fmt=fmt,
                    rows=row["result"]["row_count"],
                    size_mb=row["result"]["size_bytes"] / 1e6,
                    sql_s=min(sql_runs),
                    report_s=min(report_runs),
                    rss_self_mb=rss.peak_self_kb / 1024,
                    rss_tree_mb=rss.peak_tree_kb / 1024,
                )
                self.measurements.append(m)
                log(
                    f"[{scale}] {case} {fmt}: {m.rows:,} rows, {m.size_mb:.1f} MB;"
                    f" report runs {', '.join(f'{t:.2f}' for t in report_runs)} s,"
                    f" SQL runs {', '.join(f'{t:.2f}' for t in sql_runs)} s: best x{m.ratio:.2f};"
                    f" RSS {m.rss_self_mb:.0f} MB, with children {m.rss_tree_mb:.0f} MB"
                )
        finally:
            await queue.close()
            await db.close()

    async def scale_out_run(self, url: str, workers: int) -> float:
        db = await Database.connect(url, pool_size=2)
        queue = Queue.from_url(self.redis_url, self.queue_name)
        try:
            # each worker starts its chart renderer first
            warm = [
                await self.request(db, queue, {"kind": "low_stock", "format": "csv"})
                for _ in range(workers)
            ]
            await self.wait(db, warm, timeout=120)
            started = time.monotonic()
            busy_before, _ = cpu_times()
            ids = [
                await self.request(db, queue, {"kind": "valuation", "format": "csv"})
                for _ in range(4)
            ]
            await self.wait(db, ids, timeout=600)
            busy_after, _ = cpu_times()
            self.scale_out_cpu[workers] = (busy_after - busy_before) / os.sysconf("SC_CLK_TCK")
            return time.monotonic() - started
        finally:
            await queue.close()
            await db.close()

    # -- cleanup --

    def cleanup(self) -> None:
        self.stop_workers()
        for name in list(self.databases):
            try:
                self.drop_database(name)
            except Exception as exc:
                log(f"could not drop {name}: {exc}")
        try:
            client = redis.Redis.from_url(self.redis_url)
            patterns = [f"*{self.queue_name}*", *[f"*{job_id}*" for job_id in self.job_ids]]
            deleted = 0
            for pattern in patterns:
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    deleted += client.delete(*keys)
            client.close()
            log(f"cleaned up: databases dropped, {deleted} Redis keys deleted")
        except Exception as exc:
            log(f"could not clean Redis: {exc}")

    # -- the whole run --

    def execute(self) -> None:
        a = self.args
        busy, total = cpu_times()
        time.sleep(2)
        busy_after, total_after = cpu_times()
        self.busy_before_run = (busy_after - busy) / max(total_after - total, 1)
        log(f"CPUs busy before the run (other work on this machine): {self.busy_before_run:.0%}")
        scales = [("full", a.products, a.movements)]
        if a.scale_down > 1:
            scales.append(
                ("1/" + str(a.scale_down), a.products // a.scale_down, a.movements // a.scale_down)
            )
        for scale, products, movements in scales:
            url = self.make_database(scale.replace("/", "_"), products, movements)
            worker = self.start_worker(url)
            asyncio.run(self.measure(scale, url, worker.pid))
            if scale == "full" and not a.skip_scale_out:
                self.scale_out[1] = asyncio.run(self.scale_out_run(url, 1))
                log(f"[{scale}] 4 valuation reports, 1 worker: {self.scale_out[1]:.2f} s")
                self.start_worker(url)
                self.scale_out[2] = asyncio.run(self.scale_out_run(url, 2))
                log(f"[{scale}] 4 valuation reports, 2 workers: {self.scale_out[2]:.2f} s")
            self.stop_workers()
            self.drop_database(f"stockroom_bench_reports_{self.run_id}_{scale.replace('/', '_')}")

    def table(self) -> bool:
        ok = True
        lines = [
            "",
            f"Reports benchmark ({os.cpu_count()} CPUs, {self.busy_before_run:.0%} busy with"
            f" other work before the run; load average at the end {os.getloadavg()[0]:.1f})",
            "",
            f"seed: full {self.seed_seconds.get('full', 0):.1f} s"
            + "".join(f", {k} {v:.1f} s" for k, v in self.seed_seconds.items() if k != "full"),
            "",
            f"{'scale':<6} {'report':<15} {'fmt':<5} {'rows':>10} {'MB':>7} {'SQL s':>7}"
            f" {'report s':>9} {'ratio':>6} {'target':>7} {'RSS MB':>7} {'+kids':>7}  ok",
        ]
        for m in self.measurements:
            # The time targets are for the full data; at a tenth, only memory has one (a
            # report's fixed costs — the chart, the job's bookkeeping — dominate there).
            target = (TARGET_CSV if m.fmt == "csv" else TARGET_XLSX) if m.scale == "full" else None
            good = (target is None or m.ratio <= target) and m.rss_tree_mb <= TARGET_RSS_MB
            ok &= good
            shown = f"<={target}" if target is not None else "-"
            lines.append(
                f"{m.scale:<6} {m.case:<15} {m.fmt:<5} {m.rows:>10,} {m.size_mb:>7.1f}"
                f" {m.sql_s:>7.2f} {m.report_s:>9.2f} {m.ratio:>6.2f} {shown:>7}"
                f" {m.rss_self_mb:>7.0f} {m.rss_tree_mb:>7.0f}  {'yes' if good else 'NO'}"
            )
        full = [m for m in self.measurements if m.scale == "full"]
        small = {(m.case, m.fmt): m for m in self.measurements if m.scale != "full"}
        lines.append("")
        for m in full:
            other = small.get((m.case, m.fmt))
            if other is None:
                continue
            spread = m.rss_tree_mb / other.rss_tree_mb - 1
            good = abs(spread) <= TARGET_RSS_SPREAD
            ok &= good
            lines.append(
                f"peak RSS with children, full vs 1/10, {m.case} {m.fmt}:"
                f" {m.rss_tree_mb:.0f} vs {other.rss_tree_mb:.0f} MB ({spread:+.0%};"
                f" target within ±{TARGET_RSS_SPREAD:.0%})  {'yes' if good else 'NO'}"
            )
        if self.scale_out:
            ratio = self.scale_out[2] / self.scale_out[1]
            good = ratio <= TARGET_SCALE_OUT
            ok &= good
            lines.append(
                f"4 queued valuation reports: 1 worker {self.scale_out[1]:.2f} s, 2 workers"
                f" {self.scale_out[2]:.2f} s: x{ratio:.2f} (target <= {TARGET_SCALE_OUT})"
                f"  {'yes' if good else 'NO'}"
            )
            lines.append(
                f"  CPU time used meanwhile (all processes): {self.scale_out_cpu.get(1, 0):.1f} s"
                f" and {self.scale_out_cpu.get(2, 0):.1f} s — with {os.cpu_count()} CPUs the 4"
                f" reports cannot take less than"
                f" {self.scale_out_cpu.get(1, 0) / (os.cpu_count() or 1):.1f} s"
            )
        lines.append("")
        lines.append(
            "report s (best of runs) = the job's started_at → finished_at in the worker (the CSV or"
            " XLSX file and its PNG chart stored in PostgreSQL); SQL s = psql COPY of"
            " the report's rows query to /dev/null (movements: one statement over the"
            " window; the report runs it a UTC day at a time)."
        )
        print("\n".join(lines))
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--locations", type=int, default=10)
    parser.add_argument("--movements", type=int, default=5_000_000)
    parser.add_argument("--scale-down", type=int, default=10, help="also run at 1/N (1: don't)")
    parser.add_argument("--skip-scale-out", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (best of N)")
    parser.add_argument("--budget", type=int, default=570, help="seconds before it gives up")
    args = parser.parse_args()
    bench = Bench(
        args,
        admin_url=os.environ.get("STOCKROOM_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        redis_url=os.environ.get("STOCKROOM_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise BenchError(f"stopped by signal {signum} (budget {args.budget} s)")

    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.alarm(args.budget)
    try:
        bench.execute()
    except (BenchError, KeyboardInterrupt) as exc:
        log(f"FAILED: {exc}")
        bench.cleanup()
        return 1
    finally:
        signal.alarm(0)
    bench.cleanup()
    return 0 if bench.table() else 3


if __name__ == "__main__":
    sys.exit(main())
