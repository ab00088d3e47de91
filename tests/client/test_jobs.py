"""Jobs through the client: waiting for a real report run by a real worker, downloading it,
and the ways waiting ends badly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stockroom_client import AsyncClient, JobFailed, JobTimeout, NotFound
from tests.worker_support import WorkerFactory


async def test_wait_for_a_real_report_then_download_it(
    sr: AsyncClient, products: list[str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    await sr.restock("BOLT-M8", 4)
    start_worker()
    job = await sr.request_report("valuation", "csv")
    assert job.kind == "report" and job.status == "queued"
    seen: list[str] = []
    done = await sr.wait_for_job(
        job.id, timeout=60, interval=0.1, on_update=lambda j: seen.append(j.status)
    )
    assert done.status == "complete" and done.progress == 100 and seen[-1] == "complete"
    report = await sr.get_report(job.id)
    target = tmp_path / "valuation.csv"
    assert await sr.download_report(job.id, target) == target
    content = target.read_bytes()
    assert len(content) == report.size_bytes
    assert content.splitlines()[0].startswith(b"sku,") and b"BOLT-M8" in content
    assert [p.name for p in tmp_path.iterdir()] == ["valuation.csv"]  # no temporary file left


async def test_waiting_times_out_and_a_cancelled_job_raises(sr: AsyncClient) -> None:
    job = await sr.request_report("low_stock", "json")  # no worker runs: it stays queued
    with pytest.raises(JobTimeout) as late:
        await sr.wait_for_job(job.id, timeout=0.3, interval=0.1)
    assert isinstance(late.value, TimeoutError) and late.value.job.status == "queued"
    cancelled = await sr.cancel_job(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(JobFailed) as failed:
        await asyncio.wait_for(sr.wait_for_job(job.id, timeout=5), 10)
    assert failed.value.job.status == "cancelled"


async def test_a_report_not_found_is_raised_and_nothing_written(
    sr: AsyncClient, tmp_path: Path
) -> None:
    with pytest.raises(NotFound):
        await sr.download_report("00000000-0000-4000-8000-000000000000", tmp_path / "r.csv")
    assert list(tmp_path.iterdir()) == []
