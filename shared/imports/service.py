"""Bulk imports, the API's side: check the upload's header, store the file where every worker
can read it, queue the ``import`` job — all in the request's transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

from shared.db.connection import Connection
from shared.db.database import Database
from shared.db.unit_of_work import UnitOfWork
from shared.imports.csv_lines import InvalidImport, read_header
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job
from shared.jobs.schemas import Job
from shared.jobs.service import get_job

CHUNK_BYTES = 1 << 20
MEDIA_TYPES = ("text/csv", "application/csv")


class ImportMode(StrEnum):
    atomic = "atomic"  # every line applied, or none
    per_line = "per_line"  # each valid line applied; the others reported


class UnsupportedMediaType(InvalidImport):
    status = 415
    type_slug = "unsupported-media-type"
    title = "Unsupported media type"


def check_upload(content_type: str, body: bytes) -> None:
    """415 for a body that is not ``text/csv``; 422 for an empty one or a bad header (the
    lines themselves are the worker's to check)."""
    media = content_type.partition(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise UnsupportedMediaType(f"the body must be text/csv, not {media or 'untyped'!r}")
    first_line = body[: body.find(b"\n")] if b"\n" in body else body
    if not first_line.strip():
        raise InvalidImport("the upload is empty: a header line (sku,quantity,...) is required")
    read_header(first_line.decode("utf-8-sig", errors="replace").removesuffix("\r"))


async def store_upload(conn: Connection, upload_id: uuid.UUID, body: bytes) -> None:
    await conn.execute(
        "INSERT INTO import_uploads (id, size_bytes) VALUES ($1, $2)", upload_id, len(body)
    )
    view = memoryview(body)
    await conn.copy_records_to_table(
        "import_chunks",
        records=[
            (upload_id, seq, view[start : start + CHUNK_BYTES])
            for seq, start in enumerate(range(0, len(body), CHUNK_BYTES))
        ],
        columns=["upload_id", "seq", "data"],
    )


async def request_import(uow: UnitOfWork, content_type: str, body: bytes, mode: ImportMode) -> Job:
    """Store the upload and queue its job (whose id the upload takes) in the caller's
    transaction; the audit entry is the worker's, written with the import's effects."""
    check_upload(content_type, body)
    upload_id = uuid.uuid4()
    payload: dict[str, Any] = {
        "upload_id": str(upload_id),
        "mode": mode.value,
        "size_bytes": len(body),
        "actor": {
            "key_id": str(uow.actor.key_id) if uow.actor.key_id else None,
            "name": uow.actor.key_name,
        },
    }
    await store_upload(uow.conn, upload_id, body)
    job_id = await create_job(uow, JobKind.import_, payload, uow.job_max_tries)
    return await get_job(uow.conn, job_id)


async def iter_upload(db: Database, upload_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The upload, chunk by chunk: one short query per chunk (bounded memory)."""
    seq = 0
    while True:
        async with db.acquire() as conn:
            data: bytes | None = await conn.fetchval(
                "SELECT data FROM import_chunks WHERE upload_id = $1 AND seq = $2",
                upload_id,
                seq,
            )
        if data is None:
            return
        yield data
        seq += 1


async def purge_abandoned_uploads(conn: Connection, retention_hours: int) -> int:
    """Delete the files of uploads whose imports all ended without completing (failed or
    cancelled: a completed import deletes its own) more than ``retention_hours`` ago and none
    of which is queued or running: a retry within that time still finds its file; one after
    fails at once (``run_import``: upload again). Returns how many uploads were purged."""
    purged = await conn.fetch(
        """
        WITH abandoned AS (
            SELECT u.id FROM import_uploads u
            WHERE u.created_at < now() - make_interval(hours => $1)
              AND EXISTS (SELECT FROM import_chunks k WHERE k.upload_id = u.id AND k.seq = 0)
              AND NOT EXISTS (
                  SELECT FROM jobs j
                  WHERE j.kind = 'import' AND j.payload->>'upload_id' = u.id::text
                    AND (j.status IN ('queued', 'in_progress')
                         OR j.finished_at > now() - make_interval(hours => $1)))
            LIMIT 100
        ), gone AS (
            DELETE FROM import_chunks c USING abandoned
            WHERE c.upload_id = abandoned.id
            RETURNING c.upload_id
        )
        SELECT DISTINCT upload_id FROM gone
        """,
        retention_hours,
    )
    return len(purged)
