"""Reports, the API's side: request one (a job in the outbox), read its metadata, open its
file or chart for download. Generation is the worker's (``shared.reports.generate``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.audit.events import record_event
from shared.db.connection import Connection
from shared.db.unit_of_work import UnitOfWork
from shared.errors import Conflict, DomainError, NotFound, UnprocessableReference
from shared.jobs.kinds import JobKind, JobStatus
from shared.jobs.outbox import create_job
from shared.jobs.schemas import Job
from shared.jobs.service import get_job
from shared.reports.schemas import (
    LowStockRequest,
    MovementsRequest,
    Report,
    ReportLinks,
    ValuationRequest,
    job_payload,
)
from shared.reports.storage import PART_CHART, PART_FILE
from shared.urls import job_path, report_path


class ReportNotReady(Conflict):
    type_slug = "report-not-ready"
    title = "The report is not ready"


class ReportExpired(DomainError):
    status = 410
    type_slug = "report-expired"
    title = "The report has expired"


async def _check_references(
    conn: Connection, request: ValuationRequest | MovementsRequest | LowStockRequest
) -> None:
    """A filter naming a location or SKU that does not exist is a mistake worth a 422, not an
    empty report."""
    params = request.params
    location = getattr(params, "location_code", None)
    if location is not None and not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM locations WHERE code = $1)", location
    ):
        raise UnprocessableReference(
            f"no location {location!r}", loc=["body", "params", "location_code"]
        )
    sku = getattr(params, "sku", None)
    if sku is not None and not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM products WHERE sku = $1)", sku
    ):
        raise UnprocessableReference(f"no product {sku!r}", loc=["body", "params", "sku"])


class ReportQuotaExceeded(DomainError):
    status = 429
    type_slug = "report-quota-exceeded"
    title = "Report quota exceeded"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"Retry-After": str(retry_after)}


@dataclass(frozen=True, slots=True)
class ReportQuota:
    """Per API key: reports queued or running at once (``pending``), and bytes of reports
    kept, files and charts (``stored_bytes``); 0 is no cap. A key cannot fill the database
    with reports, nor the workers' queue with them."""

    pending: int = 0
    stored_bytes: int = 0


# Serialises one key's report requests while it counts what the key holds.
_QUOTA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('stockroom.report-quota:' || $1, 0))"
_QUOTA_USE = """
SELECT count(*) FILTER (WHERE j.status IN ('queued', 'in_progress')) AS pending,
       coalesce(sum(r.size_bytes + r.chart_bytes), 0)::bigint AS stored,
       extract(epoch FROM min(r.expires_at) - now()) AS first_expiry
FROM jobs j LEFT JOIN reports r ON r.id = j.id AND r.purged_at IS NULL
WHERE j.kind = 'report' AND j.actor_key_id = $1
  AND (j.status IN ('queued', 'in_progress') OR r.id IS NOT NULL)
"""


async def _check_quota(uow: UnitOfWork, quota: ReportQuota) -> None:
    key_id = uow.actor.key_id
    if key_id is None or not (quota.pending or quota.stored_bytes):
        return
    await uow.conn.execute(_QUOTA_LOCK, str(key_id))
    use = await uow.conn.fetchrow(_QUOTA_USE, key_id)
    assert use is not None
    if quota.pending and use["pending"] >= quota.pending:
        raise ReportQuotaExceeded(
            f"this API key has {use['pending']} reports queued or running (at most"
            f" {quota.pending}); retry once one has finished",
            retry_after=10,
            pending=use["pending"],
        )
    if quota.stored_bytes and use["stored"] >= quota.stored_bytes:
        wait = max(60, int(use["first_expiry"] or 0))
        raise ReportQuotaExceeded(
            f"this API key's reports hold {use['stored']} bytes (at most {quota.stored_bytes});"
            " retry when one expires",
            retry_after=wait,
            stored_bytes=use["stored"],
        )


async def request_report(
    uow: UnitOfWork,
    request: ValuationRequest | MovementsRequest | LowStockRequest,
    quota: ReportQuota | None = None,
) -> Job:
    """Queue the report: its job (whose id is the report's) and the request's audit event,
    in the caller's transaction; 429 when the key's ``quota`` is used up."""
    await _check_references(uow.conn, request)
    await _check_quota(uow, quota or ReportQuota())
    payload = job_payload(request)
    job_id = await create_job(uow, JobKind.report, payload, uow.job_max_tries)
    skus = [payload["params"]["sku"]] if "sku" in payload["params"] else []
    await record_event(
        uow, "report.requested", f"report:{job_id}", skus, {"report_id": str(job_id), **payload}
    )
    return await get_job(uow.conn, job_id)


def _links(report_id: uuid.UUID) -> ReportLinks:
    base = report_path(report_id)
    return ReportLinks(
        self=base,
        job=job_path(report_id),
        download=f"{base}/download",
        chart=f"{base}/chart.png",
    )


async def get_report(conn: Connection, report_id: uuid.UUID) -> Report:
    row = await conn.fetchrow(
        """
        SELECT j.id, j.payload, j.status, j.created_at, r.row_count, r.size_bytes, r.expires_at
        FROM jobs j LEFT JOIN reports r ON r.id = j.id
        WHERE j.id = $1 AND j.kind = 'report'
        """,
        report_id,
    )
    if row is None:
        raise NotFound(f"no report {report_id}")
    payload = row["payload"]
    complete = row["status"] == JobStatus.complete
    return Report(
        id=row["id"],
        kind=payload["kind"],
        format=payload["format"],
        params=payload.get("params", {}),
        status=row["status"],
        row_count=row["row_count"] if complete else None,
        size_bytes=row["size_bytes"] if complete else None,
        created_at=row["created_at"],
        expires_at=row["expires_at"] if complete else None,
        links=_links(row["id"]),
    )


@dataclass(frozen=True, slots=True)
class StoredFile:
    report_id: uuid.UUID
    blob_id: uuid.UUID
    part: int
    filename: str
    content_type: str
    size: int


async def open_file(conn: Connection, report_id: uuid.UUID, *, chart: bool = False) -> StoredFile:
    """The stored download (or chart) of a complete report: 404 unknown, 409 not complete,
    410 expired."""
    row = await conn.fetchrow(
        """
        SELECT j.status, r.blob_id, r.filename, r.content_type, r.size_bytes, r.chart_bytes,
               r.purged_at
        FROM jobs j LEFT JOIN reports r ON r.id = j.id
        WHERE j.id = $1 AND j.kind = 'report'
        """,
        report_id,
    )
    if row is None:
        raise NotFound(f"no report {report_id}")
    if row["status"] != JobStatus.complete or row["blob_id"] is None:
        raise ReportNotReady(
            f"report {report_id} is {row['status']}; poll {job_path(report_id)} until it is"
            " complete",
            report_status=row["status"],
        )
    if row["purged_at"] is not None:
        raise ReportExpired(f"report {report_id} expired and its files were deleted")
    if chart:
        stem = row["filename"].rsplit(".", 1)[0]
        return StoredFile(
            report_id, row["blob_id"], PART_CHART, f"{stem}.png", "image/png", row["chart_bytes"]
        )
    return StoredFile(
        report_id,
        row["blob_id"],
        PART_FILE,
        row["filename"],
        row["content_type"],
        row["size_bytes"],
    )
