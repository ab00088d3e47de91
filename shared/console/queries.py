"""The reads of the console's pages that the API has no endpoint for: the last hour of the
queue as a chart, and the reports list. Each is bounded and served
by an index; none touches the restock path's rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.db.connection import Connection
from shared.jobs.kinds import JobKind, JobStatus
from shared.pagination import InvalidCursor, Page, decode_cursor, encode_cursor
from shared.reports.schemas import ReportFormat, ReportKind

CHART_MINUTES = 60
CHART_MAX_JOBS = 50_000
"""The most job records one chart reads from each source (recent, still unfinished)."""

# Jobs other than audit events (those are the bulk of the table, one per mutation, and are
# drained in batches: they are no queue an operator watches). Two sources, each bounded and
# served by an index: jobs created since an hour before the window opened
# (ix_jobs_kind_created_at_id: ``kind = ANY`` searches it once per kind) and older jobs still
# unfinished (ix_jobs_status_created_at_id). An older job that finished within the hour is
# left out of its minute's depth: the chart is a picture, ``/ops/queue`` the count.
_CHART = f"""
WITH w AS (SELECT date_trunc('minute', now()) - interval '{CHART_MINUTES - 1} minutes' AS start),
c AS (
    (SELECT j.created_at, j.started_at, j.finished_at, j.status FROM jobs j, w
     WHERE j.kind = ANY($1::text[]) AND j.kind <> 'audit'
       AND j.created_at >= w.start - interval '1 hour'
     LIMIT {CHART_MAX_JOBS})
    UNION ALL
    (SELECT j.created_at, j.started_at, j.finished_at, j.status FROM jobs j, w
     WHERE j.status IN ('queued', 'in_progress') AND j.kind <> 'audit'
       AND j.created_at < w.start - interval '1 hour'
     LIMIT {CHART_MAX_JOBS})
),
ev AS (
    SELECT created_at AS at, 1 AS depth, NULL::text AS outcome FROM c
    UNION ALL
    SELECT coalesce(started_at, finished_at), -1, NULL FROM c
    WHERE coalesce(started_at, finished_at) IS NOT NULL
    UNION ALL
    SELECT finished_at, 0, status FROM c WHERE finished_at IS NOT NULL
)
SELECT w.start,
    greatest(-1, floor(extract(epoch FROM ev.at - w.start) / 60))::int AS minute,
    sum(ev.depth)::int AS depth_change,
    count(*) FILTER (WHERE ev.outcome = 'complete')::int AS completed,
    count(*) FILTER (WHERE ev.outcome = 'failed')::int AS failed
FROM ev, w
WHERE ev.at < w.start + interval '{CHART_MINUTES} minutes'
GROUP BY w.start, 2
"""  # noqa: S608


_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class QueueMinute:
    """One minute of the last hour: jobs waiting at its end, and jobs finished in it."""

    start: datetime
    depth: int
    completed: int
    failed: int


async def queue_history(conn: Connection) -> list[QueueMinute]:
    """The last ``CHART_MINUTES`` minutes (the current one last), from the job records'
    timestamps: the same on every API replica, and nothing to sample in the background."""
    kinds = [k.value for k in JobKind if k is not JobKind.audit]
    rows = await conn.fetch(_CHART, kinds)
    if not rows:
        return []
    start: datetime = rows[0]["start"]
    by_minute = {r["minute"]: r for r in rows}
    depth = by_minute[-1]["depth_change"] if -1 in by_minute else 0
    minutes = []
    for i in range(CHART_MINUTES):
        row = by_minute.get(i)
        if row is not None:
            depth += row["depth_change"]
        minutes.append(
            QueueMinute(
                start=start + (i * _MINUTE),
                depth=max(0, depth),
                completed=row["completed"] if row is not None else 0,
                failed=row["failed"] if row is not None else 0,
            )
        )
    return minutes


@dataclass(frozen=True, slots=True)
class ReportRow:
    id: uuid.UUID
    kind: ReportKind
    format: ReportFormat
    params: dict[str, Any]
    status: JobStatus
    progress: int
    row_count: int | None
    size_bytes: int | None
    created_at: datetime
    downloadable: bool


def _reports_after(cursor: str) -> tuple[datetime, uuid.UUID]:
    stamp, last_id = decode_cursor("console-reports", cursor, (str, str))
    try:
        return datetime.fromisoformat(stamp), uuid.UUID(last_id)
    except ValueError:
        raise InvalidCursor("cursor is not one this console issued") from None


async def list_reports(conn: Connection, limit: int, cursor: str | None) -> Page[ReportRow]:
    """Newest first, keyset-paginated on ``(created_at, id)`` (ix_jobs_kind_created_at_id)."""
    after = _reports_after(cursor) if cursor else None
    rows = await conn.fetch(
        """
        SELECT j.id, j.payload, j.status, j.progress, j.created_at,
               r.row_count, r.size_bytes, r.purged_at, r.blob_id
        FROM jobs j LEFT JOIN reports r ON r.id = j.id
        WHERE j.kind = 'report' AND j.kind <> 'audit'
          AND ($1::timestamptz IS NULL OR (j.created_at, j.id) < ($1, $2::uuid))
        ORDER BY j.created_at DESC, j.id DESC
        LIMIT $3
        """,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    items = [
        ReportRow(
            id=r["id"],
            kind=ReportKind(r["payload"]["kind"]),
            format=ReportFormat(r["payload"]["format"]),
            params=r["payload"].get("params", {}),
            status=JobStatus(r["status"]),
            progress=r["progress"],
            row_count=r["row_count"],
            size_bytes=r["size_bytes"],
            created_at=r["created_at"],
            downloadable=r["blob_id"] is not None and r["purged_at"] is None,
        )
        for r in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor("console-reports", [last.created_at.isoformat(), str(last.id)])
    return Page[ReportRow](items=items, next_cursor=next_cursor)
