"""Reports that go wrong: over the size cap, a worker SIGKILLed mid-report, a report cancelled
mid-way. The big ones run on data from ``stockroom seed`` (seeded once for the module), large
enough that a report is still streaming when the test acts."""

from __future__ import annotations

import io
import itertools
import signal
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openpyxl
import pytest

from shared.db.database import Database
from shared.seed import seed
from tests.conftest import TABLES, Env, count
from tests.reports.conftest import (
    WorkerFactory,
    job,
    request_report,
    wait_finished,
)
from tests.waiting import eventually

PRODUCTS = 20_000
LOCATIONS = 10


@pytest.fixture(scope="module")
async def seeded(env: Env) -> AsyncIterator[dict[str, Any]]:
    """20,000 products x 10 locations: a 200,000-row valuation (kept for the module)."""
    summary = await seed(
        env.database_url, products=PRODUCTS, locations=LOCATIONS, movements=PRODUCTS * LOCATIONS
    )
    yield summary
    conn = await asyncpg.connect(env.database_url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        await conn.execute("DELETE FROM locations WHERE code <> 'MAIN'")
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
async def _clean_tables() -> None:
    """Keeps the seeded data between this module's tests (overrides the autouse cleaner; the
    ``seeded`` fixture empties the tables when the module is done)."""


async def wait_streaming(
    client: httpx.AsyncClient, headers: dict[str, str], report_id: str
) -> dict[str, Any]:
    """Until the report's rows are streaming: in progress, past its totals, not done."""

    async def streaming() -> bool:
        current = await job(client, headers, report_id)
        assert current["status"] in ("queued", "in_progress"), current
        return current["status"] == "in_progress" and current["progress"] > 10

    await eventually(streaming, timeout=30, what=f"report {report_id} to stream")
    current = await job(client, headers, report_id)
    assert 10 < current["progress"] < 100
    return current


def converters(pid: int) -> list[int]:
    """The report converters (``shared.reports.render convert``) running under ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"convert" in command:
                found.append(int(entry.name))
    return found


async def test_worker_sigkilled_mid_report_is_retried_and_the_file_is_whole(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    db: Database,
    seeded: dict[str, Any],
    start_worker: WorkerFactory,
) -> None:
    first = start_worker()
    report_id = await request_report(client, admin, {"kind": "valuation", "format": "xlsx"})
    await wait_streaming(client, admin, report_id)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    start_worker()
    done = await wait_finished(client, admin, report_id, timeout=60)
    assert done["status"] == "complete" and done["attempts"] == 2, done

    expected = await count(db, "SELECT count(*) FROM stock_levels WHERE quantity > 0")
    assert expected == PRODUCTS * LOCATIONS
    meta = (await client.get(f"/api/v1/reports/{report_id}", headers=admin)).json()
    assert meta["row_count"] == expected
    r = await client.get(meta["links"]["download"], headers=admin)
    assert r.status_code == 200 and len(r.content) == meta["size_bytes"]
    # whole: every zip member passes its CRC, the sheet holds every row, and it opens
    with zipfile.ZipFile(io.BytesIO(r.content)) as package:
        assert package.testzip() is None
        sheet = package.read("xl/worksheets/sheet1.xml")
    assert sheet.count(b"<row ") == expected + 1  # and the header
    assert sheet.endswith(b"</sheetData></worksheet>")
    book = openpyxl.load_workbook(io.BytesIO(r.content), read_only=True)
    assert next(book.worksheets[0].iter_rows(max_row=1, values_only=True))[0] == "sku"
    # only the successful attempt's blob is left; the killed one's chunks are gone
    assert (
        await count(
            db, "SELECT count(DISTINCT blob_id) FROM report_chunks WHERE report_id = $1", report_id
        )
        == 1
    )


async def test_cancel_mid_report_stops_it_and_leaves_no_file(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    db: Database,
    seeded: dict[str, Any],
    start_worker: WorkerFactory,
) -> None:
    worker = start_worker()
    report_id = await request_report(client, admin, {"kind": "valuation", "format": "xlsx"})
    await wait_streaming(client, admin, report_id)
    assert converters(worker.pid), "the converter runs as the worker's child process"
    asked = time.monotonic()
    r = await client.post(f"/api/v1/jobs/{report_id}/cancel", headers=admin)
    assert r.status_code == 202, r.text
    cancelled = await wait_finished(client, admin, report_id, timeout=10)
    assert cancelled["status"] == "cancelled", cancelled
    assert time.monotonic() - asked < 3.0
    assert (
        await count(db, "SELECT count(*) FROM report_chunks WHERE report_id = $1", report_id) == 0
    )
    assert await count(db, "SELECT count(*) FROM reports WHERE id = $1", report_id) == 0
    assert converters(worker.pid) == []
    r = await client.get(f"/api/v1/reports/{report_id}/download", headers=admin)
    assert r.status_code == 409
    assert worker.poll() is None


async def test_progress_moves_from_0_to_100_while_a_report_runs(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    seeded: dict[str, Any],
    start_worker: WorkerFactory,
) -> None:
    start_worker()
    report_id = await request_report(client, admin, {"kind": "valuation", "format": "xlsx"})
    seen: list[tuple[float, int]] = []

    async def sample() -> bool:
        current = await job(client, admin, report_id)
        if current["status"] == "in_progress":
            seen.append((time.monotonic(), current["progress"]))
        return current["status"] == "complete"

    await eventually(sample, timeout=60, what="the report to complete")
    assert (await job(client, admin, report_id))["progress"] == 100
    values = [p for _, p in seen]
    assert values == sorted(values), "progress never goes back"
    assert len({p for p in values if 0 < p < 100}) >= 3, values
    # while rows stream (5 to 95), a new value at least every second or so
    moving = [t for (t, p), (_, q) in itertools.pairwise(seen) if q > p and 5 <= p < 95]
    assert all(b - a < 2.0 for a, b in itertools.pairwise(moving)), seen


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_a_report_over_the_size_cap_fails_at_once_and_stores_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    db: Database,
    seeded: dict[str, Any],
    start_worker: WorkerFactory,
    fmt: str,
) -> None:
    start_worker(STOCKROOM_REPORT_MAX_BYTES=str(2 * 1024 * 1024))
    report_id = await request_report(client, admin, {"kind": "valuation", "format": fmt})
    failed = await wait_finished(client, admin, report_id)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "larger than STOCKROOM_REPORT_MAX_BYTES (2,097,152 bytes)" in failed["error"]
    assert (
        await count(db, "SELECT count(*) FROM report_chunks WHERE report_id = $1", report_id) == 0
    )


async def test_more_reports_than_the_pool_can_serve_all_complete(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    seeded: dict[str, Any],
    start_worker: WorkerFactory,
) -> None:
    """A report holds several pooled connections, taken one after another: a worker running
    more reports than its pool serves had each hold some and wait for the rest, for ever.
    It runs as many at once as the pool serves, the rest after."""
    start_worker(STOCKROOM_DB_POOL_SIZE="4", STOCKROOM_WORKER_CONCURRENCY="10")
    ids = [
        await request_report(client, admin, {"kind": "valuation", "format": "csv"})
        for _ in range(4)
    ]
    for report_id in ids:
        done = await wait_finished(client, admin, report_id, timeout=120)
        assert done["status"] == "complete", done
