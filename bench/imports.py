#!/usr/bin/env python3
"""The bulk-import benchmark, in one command: ``bench/imports.sh`` (or ``.venv/bin/python
bench/imports.py``).

On a database of its own (``--products`` products, ``--locations`` locations), with a real
API process and one real worker process, it uploads a CSV of ``--lines`` restock lines through
``stockroom_client`` (random SKUs and locations, a reference on every tenth line) and follows
the import job, once in ``atomic`` mode and once in ``per_line`` mode, and prints for each:
- the upload (POST → 202) and the job (``started_at`` → ``finished_at``), and the whole
  (upload → complete, as the client sees it);
- the worker's peak RSS during the import (sampled from /proc every 50 ms);
- a correctness check: every line applied once (units and ledger rows).
Targets (issue #15): 100,000 lines in ≤ 30 s with worker RSS ≤ 250 MB (other sizes: the
same rate).

Settings: ``STOCKROOM_BENCH_DATABASE_URL`` (admin URL), ``STOCKROOM_BENCH_REDIS_URL``.
Exit status: 0 when every target is met, 3 when one is missed, 1 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reports import RssSampler  # noqa: E402
from bench.worker_common import (  # noqa: E402
    STOCKROOM,
    BenchError,
    Stack,
    install_budget,
    log,
    machine_note,
    table,
)
from shared.embedded import free_port  # noqa: E402
from stockroom_client import Client, RetryPolicy  # noqa: E402

TARGET_SECONDS = 30.0  # for 100,000 lines: other sizes are held to the same rate
TARGET_LINES = 100_000
TARGET_RSS_MB = 250.0


async def _seed(url: str, products: int, locations: int) -> str:
    """Products and locations, set-based; returns an admin key."""
    from shared.auth.service import create_key

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO products (sku, title, unit_price)"
            " SELECT 'SKU-' || g, 'Item ' || g, 9.99 FROM generate_series(1, $1) g",
            products,
        )
        await conn.execute(
            "INSERT INTO locations (code) SELECT 'LOC-' || g FROM generate_series(1, $1) g",
            locations - 1,
        )
        created = await create_key(conn, "bench-imports", ["admin"])
        return created.key
    finally:
        await conn.close()


async def _totals(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT coalesce(sum(quantity), 0) FROM stock_levels) AS units,"
            " (SELECT count(*) FROM movements) AS movements"
        )
        assert row is not None
        return int(row["units"]), int(row["movements"])
    finally:
        await conn.close()


def make_csv(lines: int, products: int, locations: int, seed: int) -> tuple[bytes, int]:
    rng = random.Random(seed)
    codes = ["MAIN"] + [f"LOC-{i}" for i in range(1, locations)]
    out = ["sku,quantity,location_code,reference"]
    units = 0
    for i in range(lines):
        quantity = rng.randint(1, 500)
        units += quantity
        reference = f"po-{i // 10}" if i % 10 == 0 else ""
        out.append(f"SKU-{rng.randint(1, products)},{quantity},{rng.choice(codes)},{reference}")
    return ("\n".join(out) + "\n").encode(), units


def run(args: argparse.Namespace) -> bool:
    stack = Stack(prefix="ibench")
    ok = False
    try:
        stack.create_database()
        key = asyncio.run(_seed(stack.db_url, args.products, args.locations))
        port = free_port()
        api = stack.start("api", [STOCKROOM, "api", "--port", str(port)])
        worker = stack.start("worker", [STOCKROOM, "worker"])
        stack.wait_ours_ready([worker])
        url = f"http://127.0.0.1:{port}"
        rows: list[list[object]] = []
        ok = True
        with Client(url, key, timeout=120, retry=RetryPolicy(attempts=20)) as client:
            deadline = time.monotonic() + 60
            while True:  # the API process is up once it answers
                stack.check_alive(api)
                try:
                    client.list_jobs(limit=1)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            expected_units = expected_rows = 0
            for number, mode in enumerate(("atomic", "per_line")):
                body, units = make_csv(args.lines, args.products, args.locations, number)
                expected_units += units
                expected_rows += args.lines
                log(f"{mode}: uploading {args.lines:,} lines ({len(body) / 1e6:.1f} MB)")
                with RssSampler(worker.pid) as rss:
                    started = time.monotonic()
                    job = client.import_csv(body, mode=mode)  # type: ignore[arg-type]
                    uploaded = time.monotonic() - started
                    done = client.wait_for_job(job.id, timeout=600, interval=0.1)
                    total = time.monotonic() - started
                assert done.result is not None and done.started_at and done.finished_at
                job_seconds = (done.finished_at - done.started_at).total_seconds()
                applied = done.result["applied"]
                units_now, rows_now = asyncio.run(_totals(stack.db_url))
                correct = (
                    applied == args.lines
                    and units_now == expected_units
                    and rows_now == expected_rows
                )
                peak_mb = rss.peak_self_kb / 1024
                in_time = total <= TARGET_SECONDS * args.lines / TARGET_LINES
                met = in_time and peak_mb <= TARGET_RSS_MB and correct
                ok = ok and met
                rows.append(
                    [
                        mode,
                        f"{args.lines:,}",
                        f"{uploaded:.2f}",
                        f"{job_seconds:.2f}",
                        f"{total:.2f}",
                        f"{args.lines / total:,.0f}",
                        f"{peak_mb:.0f}",
                        "yes" if correct else f"NO ({applied} applied, {units_now} units)",
                        "met" if met else "MISSED",
                    ]
                )
        print()
        print(machine_note())
        print(
            table(
                [
                    "mode",
                    "lines",
                    "upload s",
                    "job s",
                    "total s",
                    "lines/s",
                    "worker peak RSS MB",
                    "each line once",
                    f"≤ {TARGET_SECONDS:.0f} s per {TARGET_LINES:,} lines, ≤ {TARGET_RSS_MB:.0f} MB",
                ],
                rows,
            )
        )
        return ok
    finally:
        stack.cleanup(keep_logs=not ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--locations", type=int, default=5)
    parser.add_argument("--budget", type=int, default=600, help="seconds before giving up")
    args = parser.parse_args()
    install_budget(args.budget)
    try:
        return 0 if run(args) else 3
    except BenchError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
