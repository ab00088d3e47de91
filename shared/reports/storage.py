"""Report files in PostgreSQL, where every API replica reads them.

A file is a run of ~1 MiB ``bytea`` chunks in ``report_chunks``, keyed by (report, blob, part,
seq): ``part`` 0 is the download, 1 the chart. Each attempt at a report writes under a blob id
of its own, chunk by chunk as the file is produced (constant memory), and nothing points at it
until the attempt *publishes*: one transaction that checks the job is still this worker's,
points the ``reports`` row at the blob and deletes every other blob of the report. So a killed,
cancelled or failed attempt never leaves a partial file visible; what it did write is deleted
by the attempt itself when it can, or by the next attempt, or by ``purge_expired_reports``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db.connection import Connection
from shared.db.database import Database

CHUNK_BYTES = 1 << 20
PART_FILE = 0
PART_CHART = 1


class ReportTooLarge(Exception):
    """The file outgrew STOCKROOM_REPORT_MAX_BYTES."""


class ChunkWriter:
    """Cuts a byte stream into chunks and inserts them, one statement per chunk (autocommit:
    an unpublished blob is invisible anyway)."""

    def __init__(
        self,
        conn: Connection,
        report_id: uuid.UUID,
        blob_id: uuid.UUID,
        part: int,
        max_bytes: int | None = None,
    ) -> None:
        self._conn = conn
        self._report_id = report_id
        self._blob_id = blob_id
        self._part = part
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._seq = 0
        self.size = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise ReportTooLarge(
                f"the report is larger than STOCKROOM_REPORT_MAX_BYTES ({self._max_bytes:,} "
                "bytes); narrow it with its params (a category, a location, a shorter window)"
            )
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            await self._insert(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]

    async def close(self) -> None:
        if self._buffer or self._seq == 0:
            await self._insert(bytes(self._buffer))
            self._buffer.clear()

    async def _insert(self, data: bytes) -> None:
        await self._conn.execute(
            "INSERT INTO report_chunks (report_id, blob_id, part, seq, data)"
            " VALUES ($1, $2, $3, $4, $5)",
            self._report_id,
            self._blob_id,
            self._part,
            self._seq,
            data,
        )
        self._seq += 1


async def write_unpublished_asynchronously(conn: Connection) -> None:
    """Chunk inserts on ``conn`` commit without waiting for their WAL flush (no fsync per
    MiB): an unpublished blob need not survive a crash, the attempt would run again. Publishing
    commits synchronously, which makes every chunk before it durable too (the WAL is flushed
    in order). The pool's reset on release undoes the setting."""
    await conn.execute("SET synchronous_commit = off")


async def discard_blob(conn: Connection, report_id: uuid.UUID, blob_id: uuid.UUID) -> None:
    await conn.execute(
        "DELETE FROM report_chunks WHERE report_id = $1 AND blob_id = $2", report_id, blob_id
    )


async def discard_unpublished(conn: Connection, report_id: uuid.UUID) -> None:
    """What earlier attempts at this report left behind (a killed worker writes no epilogue)."""
    await conn.execute(
        """
        DELETE FROM report_chunks c
        WHERE c.report_id = $1 AND c.blob_id IS DISTINCT FROM
            (SELECT r.blob_id FROM reports r WHERE r.id = $1 AND r.purged_at IS NULL)
        """,
        report_id,
    )


@dataclass(frozen=True, slots=True)
class Published:
    blob_id: uuid.UUID
    filename: str
    content_type: str
    row_count: int
    size_bytes: int
    chart_bytes: int
    totals: dict[str, Any]
    generated_at: datetime
    retention_hours: int


async def publish(
    conn: Connection, report_id: uuid.UUID, worker_id: str, generation: int, file: Published
) -> bool:
    """Make ``file`` the report's, atomically; ``False`` (and nothing changes) when the job is
    no longer this claim's to finish (its lease was lost, or it was cancelled)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        owner = await conn.fetchrow(
            """
            SELECT worker_id, generation FROM jobs
            WHERE id = $1 AND status = 'in_progress' AND NOT cancel_requested
            FOR UPDATE
            """,
            report_id,
        )
        if owner is None or (owner["worker_id"], owner["generation"]) != (worker_id, generation):
            return False
        await conn.execute(
            """
            INSERT INTO reports (id, blob_id, filename, content_type, row_count, size_bytes,
                                 chart_bytes, totals, generated_at, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                    now() + make_interval(hours => $10))
            ON CONFLICT (id) DO UPDATE SET
                blob_id = excluded.blob_id, filename = excluded.filename,
                content_type = excluded.content_type, row_count = excluded.row_count,
                size_bytes = excluded.size_bytes, chart_bytes = excluded.chart_bytes,
                totals = excluded.totals, generated_at = excluded.generated_at,
                expires_at = excluded.expires_at, purged_at = NULL
            """,
            report_id,
            file.blob_id,
            file.filename,
            file.content_type,
            file.row_count,
            file.size_bytes,
            file.chart_bytes,
            file.totals,
            file.generated_at,
            file.retention_hours,
        )
        await conn.execute(
            "DELETE FROM report_chunks WHERE report_id = $1 AND blob_id <> $2",
            report_id,
            file.blob_id,
        )
    return True


async def purge_expired_reports(conn: Connection) -> int:
    """Delete the files of reports past their ``expires_at`` (their metadata stays, marked
    purged: a download then answers 410), and chunks no report points at whose job is over
    (left by a worker killed mid-attempt). Returns how many reports expired."""
    async with conn.transaction():
        expired = await conn.fetch(
            """
            UPDATE reports SET purged_at = now()
            WHERE purged_at IS NULL AND expires_at < now()
            RETURNING id
            """
        )
        if expired:
            await conn.execute(
                "DELETE FROM report_chunks WHERE report_id = ANY($1::uuid[])",
                [r["id"] for r in expired],
            )
    await conn.execute(
        """
        DELETE FROM report_chunks c
        WHERE NOT EXISTS (
                SELECT 1 FROM reports r
                WHERE r.id = c.report_id AND r.blob_id = c.blob_id AND r.purged_at IS NULL)
          AND NOT EXISTS (
                SELECT 1 FROM jobs j
                WHERE j.id = c.report_id AND j.status IN ('queued', 'in_progress'))
        """
    )
    return len(expired)


async def iter_chunks(
    db: Database, report_id: uuid.UUID, blob_id: uuid.UUID, part: int
) -> AsyncIterator[bytes]:
    """The file, chunk by chunk: one short query per chunk, so a slow client holds no
    connection between chunks."""
    seq = 0
    while True:
        async with db.acquire() as conn:
            data: bytes | None = await conn.fetchval(
                "SELECT data FROM report_chunks"
                " WHERE report_id = $1 AND blob_id = $2 AND part = $3 AND seq = $4",
                report_id,
                blob_id,
                part,
                seq,
            )
        if data is None:
            return
        yield data
        seq += 1
