"""Reports: request one (the worker generates it), read its metadata, download it and its
chart."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Response
from fastapi.responses import StreamingResponse

from api.auth import ConnDep, requires
from api.mutations import Mutation, MutationRoute, mutates
from api.state import StateDep
from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.jobs.schemas import Job
from shared.reports import service
from shared.reports.schemas import Report, ReportRequest
from shared.reports.service import StoredFile
from shared.reports.storage import iter_chunks

router = APIRouter(route_class=MutationRoute, prefix="/reports", tags=["reports"])

ReportsRead = Annotated[Principal, requires(Scope.reports_read)]
ReportsWrite = Annotated[Mutation, mutates(Scope.reports_write)]

_NOT_READY: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such report"},
    409: {"description": "The report is not complete (yet)"},
    410: {"description": "The report expired; its files were deleted"},
}


@router.post(
    "",
    status_code=202,
    response_model=Job,
    responses={202: {"description": "Queued; poll the job at `Location`"}},
)
async def request_report(
    body: Annotated[ReportRequest, Body(discriminator="kind")], m: ReportsWrite, state: StateDep
) -> Response:
    """Queue a report. `kind`: `valuation` (params: optional `category`, `location_code`),
    `movements` (params: `since`, `until` — RFC 3339 with offset, the window is
    `[since, until)` — and optional `sku`, `location_code`), `low_stock` (params: optional
    `category`). `format`: `csv`, `json` or `xlsx`. Answers with the report's job (whose id is
    the report's); poll it, then download."""
    quota = service.ReportQuota(
        pending=state.settings.report_quota_pending,
        stored_bytes=state.settings.report_quota_bytes,
    )
    job = await service.request_report(m.uow, body, quota)
    return await m.respond(202, job, {"Location": job.links.self})


@router.get("/{report_id}", response_model=Report, responses={404: _NOT_READY[404]})
async def get_report(report_id: uuid.UUID, conn: ConnDep, _: ReportsRead) -> Report:
    """The report's metadata; `status` is its job's, `row_count` and `size_bytes` are set
    once it is complete."""
    return await service.get_report(conn, report_id)


def stored_file_response(state: StateDep, stored: StoredFile) -> StreamingResponse:
    """A stored report file (or chart) streamed from its chunks, as a download."""
    ascii_name = stored.filename.encode("ascii", "replace").decode()
    disposition = (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(stored.filename)}"
    )
    return StreamingResponse(
        iter_chunks(state.db, stored.report_id, stored.blob_id, stored.part),
        media_type=stored.content_type,
        headers={
            "Content-Length": str(stored.size),
            "Content-Disposition": disposition,
            "Cache-Control": "private, max-age=3600",
        },
    )


@router.get(
    "/{report_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The report file (CSV, JSON or XLSX), streamed",
            "content": {
                "text/csv": {},
                "application/json": {},
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {},
            },
        },
        **_NOT_READY,
    },
)
async def download_report(
    report_id: uuid.UUID, conn: ConnDep, state: StateDep, _: ReportsRead
) -> StreamingResponse:
    """The report's file, streamed chunk by chunk from the database, as an attachment."""
    return stored_file_response(state, await service.open_file(conn, report_id))


@router.get(
    "/{report_id}/chart.png",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The report's chart", "content": {"image/png": {}}},
        **_NOT_READY,
    },
)
async def report_chart(
    report_id: uuid.UUID, conn: ConnDep, state: StateDep, _: ReportsRead
) -> StreamingResponse:
    """The report's chart: value by category and location, movement per day, or the SKUs
    furthest below their reorder point."""
    return stored_file_response(state, await service.open_file(conn, report_id, chart=True))
