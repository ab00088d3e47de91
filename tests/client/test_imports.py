"""Bulk imports through the client, run by a real worker: atomic and per-line, the errors
named by line, progress by lines, and the job's effects applied exactly once."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from api.app import create_app
from shared.db.database import Database
from shared.imports import runner
from shared.imports.runner import ImportJob, ImportSuperseded, run_import
from stockroom_client import (
    AsyncClient,
    ImportResult,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from stockroom_client.calls import Call
from tests.client.conftest import on_hand
from tests.conftest import Env, count
from tests.waiting import eventually
from tests.worker_support import WorkerFactory

GOOD_AND_BAD = (
    b"sku,quantity,location_code,reference\n"
    b"BOLT-M8,10,MAIN,po-1\n"
    b"NUT-M8,5,DOCK-2,\n"
    b"NOPE-1,3,MAIN,\n"  # line 4: unknown SKU
    b"WASHER-M8,7,,\n"
    b"BOLT-M8,2,NOWHERE,\n"  # line 6: unknown location
    b"WASHER-M8,-1,MAIN,\n"  # line 7: bad quantity
    b"sku,quantity,location_code,reference\n"  # line 8: a second header
    b"BOLT-M8,4\n"  # line 9: a missing column
)


async def _import(sr: AsyncClient, body: bytes, mode: str = "atomic") -> ImportResult:
    job = await sr.import_csv(body, mode=mode)  # type: ignore[arg-type]
    assert job.kind == "import" and job.status == "queued"
    done = await sr.wait_for_job(job.id, timeout=60, interval=0.1)
    return ImportResult.model_validate(done.result)


async def test_an_atomic_import_with_bad_lines_changes_nothing_and_names_them(
    sr: AsyncClient, db: Database, products: list[str], start_worker: WorkerFactory
) -> None:
    start_worker()
    result = await _import(sr, GOOD_AND_BAD)
    assert (result.lines, result.applied, result.rejected) == (8, 0, 5)
    reasons = {e.line: (e.sku, e.reason) for e in result.errors}
    assert sorted(reasons) == [4, 6, 7, 8, 9]
    assert reasons[4] == ("NOPE-1", "unknown SKU NOPE-1")
    assert reasons[6] == ("BOLT-M8", "unknown location NOWHERE")
    assert "quantity" in reasons[7][1]
    assert reasons[8][1] == "a second header line"
    assert "expected 4 fields" in reasons[9][1]
    assert await count(db, "SELECT count(*) FROM movements") == 0
    assert await count(db, "SELECT count(*) FROM stock_levels") == 0


async def test_a_per_line_import_applies_every_valid_line(
    sr: AsyncClient, db: Database, products: list[str], start_worker: WorkerFactory
) -> None:
    start_worker()
    result = await _import(sr, GOOD_AND_BAD, mode="per_line")
    assert (result.lines, result.applied, result.rejected) == (8, 3, 5)
    assert [e.line for e in result.errors] == [4, 6, 7, 8, 9]
    assert await on_hand(db, "BOLT-M8") == 10
    assert await on_hand(db, "NUT-M8") == 5
    assert await on_hand(db, "WASHER-M8") == 7
    assert await count(db, "SELECT count(*) FROM movements WHERE reason = 'restock'") == 3
    assert await count(db, "SELECT count(*) FROM movements WHERE reference = 'po-1'") == 1
    assert await count(db, "SELECT count(*) FROM import_chunks") == 0  # the file, once over

    async def audited() -> bool:  # one entry for the whole import, written by the worker
        return len((await sr.list_audit(action="inventory.imported")).items) == 1

    await eventually(audited, timeout=30, what="the import's audit entry")
    (entry,) = (await sr.list_audit(action="inventory.imported")).items
    assert entry.payload["applied"] == 3 and entry.payload["mode"] == "per_line"
    assert entry.actor.name == "client-tests"


async def test_ten_thousand_lines_report_progress_up_to_100(
    sr: AsyncClient, db: Database, products: list[str], start_worker: WorkerFactory
) -> None:
    start_worker()
    lines = ["sku,quantity,location_code"]
    lines += [
        f"{products[i % 3]},{1 + i % 5},{'MAIN' if i % 2 else 'DOCK-2'}" for i in range(10_000)
    ]
    expected = sum(1 + i % 5 for i in range(10_000))
    job = await sr.import_csv("\n".join(lines).encode(), mode="per_line")
    seen: list[int] = []
    done = await sr.wait_for_job(
        job.id, timeout=120, interval=0.05, on_update=lambda j: seen.append(j.progress)
    )
    assert done.status == "complete"
    assert seen == sorted(seen) and seen[-1] == 100
    result = ImportResult.model_validate(done.result)
    assert (result.lines, result.applied, result.rejected) == (10_000, 10_000, 0)
    assert sum([await on_hand(db, sku) for sku in products]) == expected
    assert await count(db, "SELECT count(*) FROM movements") == 10_000


async def test_a_bad_header_or_a_body_that_is_not_csv_is_refused_at_once(
    sr: AsyncClient, db: Database
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await sr.import_csv(b"sku,sku,qty\nBOLT-M8,1,1\n")
    messages = [e["msg"] for e in refused.value.errors]
    assert "column 'sku' appears twice" in messages
    assert "column 'quantity' is missing" in messages
    with pytest.raises(UnsupportedMediaType):
        await sr.send(
            Call(
                "POST",
                "/api/v1/inventory/imports",
                lambda r: r,
                content=b"sku,quantity\n",
                headers={"Content-Type": "application/json"},
            )
        )
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'import'") == 0


async def test_imports_take_up_to_import_max_bytes_and_other_bodies_max_body_bytes(
    env: Env, key: str, products: list[str]
) -> None:
    assert env.settings().import_max_bytes == 50_000_000  # the default
    app = create_app(env.settings(import_max_bytes=3_000_000))
    big = b"sku,quantity,note\n" + b"BOLT-M8,1,%s\n" % (b"x" * 900) * 2200  # ~2 MB
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://t", key, transport=transport) as client:
            job = await client.import_csv(big)  # over MAX_BODY_BYTES (1 MiB), under 3 MB
            assert job.kind == "import"
            with pytest.raises(PayloadTooLarge):
                await client.import_csv(big + big)
            with pytest.raises(PayloadTooLarge):  # the restock's limit is unchanged
                await client.restock("BOLT-M8", 1, note="x" * 1_100_000)


async def _queued_import(sr: AsyncClient, db: Database, body: bytes, mode: str) -> ImportJob:
    job = await sr.import_csv(body, mode=mode)  # type: ignore[arg-type]
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT payload, generation, request_id FROM jobs WHERE id = $1", job.id
        )
    assert row is not None
    return ImportJob.from_payload(
        job.id, row["generation"], row["payload"], row["request_id"], job_max_tries=5
    )


async def _no_progress(percent: int) -> None:
    return None


@pytest.mark.parametrize("mode", ["atomic", "per_line"])
async def test_a_second_run_of_an_import_applies_nothing_twice(
    sr: AsyncClient, db: Database, env: Env, products: list[str], mode: str
) -> None:
    job = await _queued_import(sr, db, b"sku,quantity\nBOLT-M8,3\nNUT-M8,4\n", mode)
    first = await run_import(db, job, _no_progress)
    again = await run_import(db, job, _no_progress)  # at-least-once delivery: the same claim
    assert first.result == again.result == {"lines": 2, "applied": 2, "rejected": 0, "errors": []}
    assert await on_hand(db, "BOLT-M8") == 3 and await on_hand(db, "NUT-M8") == 4
    assert await count(db, "SELECT count(*) FROM movements") == 2
    assert len(first.new_jobs) == 1 and again.new_jobs == []


async def test_an_older_claim_of_an_import_is_fenced_off(
    sr: AsyncClient, db: Database, products: list[str]
) -> None:
    job = await _queued_import(sr, db, b"sku,quantity\nBOLT-M8,3\n", "per_line")
    newer = dataclasses.replace(job, generation=job.generation + 1)
    async with db.pool.acquire() as conn:  # the newer claim has started
        await conn.execute(
            "INSERT INTO import_runs (upload_id, job_id, generation) VALUES ($1, $2, $3)",
            job.upload_id,
            job.job_id,
            newer.generation,
        )
    with pytest.raises(ImportSuperseded):
        await run_import(db, job, _no_progress)
    assert await count(db, "SELECT count(*) FROM movements") == 0
    assert (await run_import(db, newer, _no_progress)).result["applied"] == 1
    assert await on_hand(db, "BOLT-M8") == 3


class _Crash(Exception):
    """Stands for the worker dying between two batches."""


async def crash_after_the_first_batch(percent: int) -> None:
    """A crash as soon as progress passes the first batch (batches of two lines below)."""
    if 50 < percent < 100:
        raise _Crash


async def test_a_per_line_import_cut_short_resumes_after_its_last_committed_batch(
    sr: AsyncClient, db: Database, products: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "PER_LINE_BATCH", 2)
    body = b"sku,quantity\nBOLT-M8,1\nNUT-M8,2\nNOPE-1,3\nWASHER-M8,4\nBOLT-M8,5\n"
    job = await _queued_import(sr, db, body, "per_line")

    with pytest.raises(_Crash):
        await run_import(db, job, crash_after_the_first_batch)
    # the first batch (lines 1-2: the header and BOLT-M8,1) committed, nothing after it
    assert await count(db, "SELECT count(*) FROM movements") == 1
    assert await on_hand(db, "BOLT-M8") == 1 and await on_hand(db, "NUT-M8") == 0

    again = dataclasses.replace(job, generation=job.generation + 1)  # the job reclaimed
    result = (await run_import(db, again, _no_progress)).result
    assert (result["lines"], result["applied"], result["rejected"]) == (5, 4, 1)
    assert result["errors"] == [{"line": 4, "sku": "NOPE-1", "reason": "unknown SKU NOPE-1"}]
    assert await on_hand(db, "BOLT-M8") == 6 and await on_hand(db, "NUT-M8") == 2
    assert await on_hand(db, "WASHER-M8") == 4
    assert await count(db, "SELECT count(*) FROM movements") == 4


async def test_at_most_1000_errors_are_listed_and_every_rejection_counted(
    sr: AsyncClient, db: Database, products: list[str]
) -> None:
    lines = [b"sku,quantity", b"BOLT-M8,1"] + [b"NOPE-%d,1" % i for i in range(1200)]
    job = await _queued_import(sr, db, b"\n".join(lines), "per_line")
    result = (await run_import(db, job, _no_progress)).result
    assert (result["lines"], result["applied"], result["rejected"]) == (1201, 1, 1200)
    assert len(result["errors"]) == 1000
    assert [e["line"] for e in result["errors"]] == list(range(3, 1003))  # the first ones


async def _set_status(db: Database, job: ImportJob, status: str) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET status = $2 WHERE id = $1", job.job_id, status)


async def test_a_retried_import_resumes_where_the_failed_one_stopped(
    sr: AsyncClient, db: Database, products: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "PER_LINE_BATCH", 2)
    body = b"sku,quantity\nBOLT-M8,1\nNUT-M8,2\nWASHER-M8,4\n"
    first = await _queued_import(sr, db, body, "per_line")

    with pytest.raises(_Crash):
        await run_import(db, first, crash_after_the_first_batch)
    await _set_status(db, first, "failed")  # the worker gave up on it
    retry = await sr.retry_job(first.job_id)
    assert retry.retry_of == first.job_id
    async with db.pool.acquire() as conn:
        payload = await conn.fetchval("SELECT payload FROM jobs WHERE id = $1", retry.id)
    second = ImportJob.from_payload(retry.id, 0, payload, None, job_max_tries=5)
    assert second.upload_id == first.upload_id

    await _set_status(db, first, "in_progress")  # while the first may still run: refused
    with pytest.raises(ImportSuperseded):
        await run_import(db, second, _no_progress)
    await _set_status(db, first, "failed")
    result = (await run_import(db, second, _no_progress)).result
    assert (result["lines"], result["applied"], result["rejected"]) == (3, 3, 0)
    assert await on_hand(db, "BOLT-M8") == 1 and await on_hand(db, "NUT-M8") == 2
    assert await on_hand(db, "WASHER-M8") == 4
    assert await count(db, "SELECT count(*) FROM movements") == 3
