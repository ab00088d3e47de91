"""The files of imports that ended without completing are kept for a retry, then purged by the
worker (``shared.imports.service.purge_abandoned_uploads``); a retry after that fails at once,
saying so, instead of importing nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.db.connection import Connection
from shared.db.database import Database
from shared.imports.runner import ImportJob, run_import
from shared.imports.service import purge_abandoned_uploads, store_upload
from shared.jobs.retry import PermanentJobError

CSV = b"sku,quantity\nBOLT-M8,1\n"
RETENTION_HOURS = 2


async def _import(db: Database, status: str, ended_hours_ago: float | None) -> uuid.UUID:
    """An upload, created three retention periods ago, and an import job of it."""
    upload_id = uuid.uuid4()
    async with db.acquire() as conn, conn.transaction():
        await store_upload(conn, upload_id, CSV)
        await conn.execute(
            "UPDATE import_uploads SET created_at = now() - make_interval(hours => $2)"
            " WHERE id = $1",
            upload_id,
            3 * RETENTION_HOURS,
        )
        await _job(conn, upload_id, status, ended_hours_ago)
    return upload_id


def _payload(upload_id: uuid.UUID) -> dict[str, Any]:
    """An import job's payload, as ``request_import`` writes it."""
    return {"upload_id": str(upload_id), "mode": "atomic", "size_bytes": len(CSV)}


async def _job(
    conn: Connection, upload_id: uuid.UUID, status: str, ended: float | None
) -> uuid.UUID:
    """An import job of the upload, ``ended`` hours ago (``None``: not ended)."""
    job_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO jobs (kind, payload, max_attempts, status, finished_at)
        VALUES ('import', $1, 5, $2,
                CASE WHEN $3::float8 IS NULL THEN NULL
                     ELSE now() - make_interval(secs => $3::float8 * 3600) END)
        RETURNING id
        """,
        _payload(upload_id),
        status,
        ended,
    )
    return job_id


async def _kept(db: Database, upload_id: uuid.UUID) -> bool:
    async with db.acquire() as conn:
        found: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM import_chunks WHERE upload_id = $1)", upload_id
        )
        return found


async def test_a_failed_imports_file_is_kept_for_its_retention_then_purged(db: Database) -> None:
    failed_long_ago = await _import(db, "failed", 2 * RETENTION_HOURS)
    cancelled_long_ago = await _import(db, "cancelled", 2 * RETENTION_HOURS)
    failed_lately = await _import(db, "failed", RETENTION_HOURS / 2)
    running = await _import(db, "in_progress", None)
    async with db.acquire() as conn:
        assert await purge_abandoned_uploads(conn, RETENTION_HOURS) >= 2
        assert await purge_abandoned_uploads(conn, RETENTION_HOURS) == 0  # nothing left to do
    assert not await _kept(db, failed_long_ago)
    assert not await _kept(db, cancelled_long_ago)
    assert await _kept(db, failed_lately)  # a retry may still come
    assert await _kept(db, running)


async def test_a_queued_retry_keeps_the_file_of_an_import_that_failed_long_ago(
    db: Database,
) -> None:
    upload_id = await _import(db, "failed", 2 * RETENTION_HOURS)
    async with db.acquire() as conn:
        await _job(conn, upload_id, "queued", None)  # POST /jobs/{id}/retry
        await purge_abandoned_uploads(conn, RETENTION_HOURS)
    assert await _kept(db, upload_id)


async def test_a_retry_after_the_purge_fails_at_once_saying_so(db: Database) -> None:
    upload_id = await _import(db, "failed", 2 * RETENTION_HOURS)
    async with db.acquire() as conn:
        await purge_abandoned_uploads(conn, RETENTION_HOURS)
        retry_id = await _job(conn, upload_id, "in_progress", None)
    job = ImportJob.from_payload(retry_id, 0, _payload(upload_id), None, 5)

    async def progress(_: int) -> None:
        return None

    with pytest.raises(PermanentJobError, match="purged"):
        await run_import(db, job, progress)
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM movements") == 0
