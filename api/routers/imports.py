"""Bulk imports: a CSV of restocks, uploaded, then applied by a worker job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from api.mutations import Mutation, MutationRoute, mutates
from shared.auth.keys import Scope
from shared.imports.service import ImportMode, request_import
from shared.jobs.schemas import Job

router = APIRouter(route_class=MutationRoute, prefix="/inventory", tags=["inventory"])

IMPORTS_PATH = "/inventory/imports"
InventoryWrite = Annotated[Mutation, mutates(Scope.inventory_write)]

_CSV_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Header `sku,quantity` (and optionally `location_code`, `reference`,"
        " `note`, in any order), then one restock per line. UTF-8; up to"
        " `STOCKROOM_IMPORT_MAX_BYTES`.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/imports",
    status_code=202,
    response_model=Job,
    openapi_extra=_CSV_BODY,
    responses={
        202: {"description": "Queued; poll the import job at `Location`"},
        413: {"description": "The upload is larger than `STOCKROOM_IMPORT_MAX_BYTES`"},
        415: {"description": "The body is not `text/csv`"},
        422: {"description": "The header is not `sku,quantity[,...]`, or `mode` is unknown"},
    },
)
async def import_restocks(
    request: Request,
    m: InventoryWrite,
    mode: Annotated[ImportMode, Query(description="`atomic`: all lines or none")] = (
        ImportMode.atomic
    ),
) -> Response:
    """Import restocks from a CSV. The worker validates every line (unknown SKU or location,
    bad quantity, wrong number of fields, a repeated header...) and applies them: `atomic`
    (the default) all or none, `per_line` each valid one; each applied line is a restock with
    its own ledger movement, and the import gets one audit entry. The job's `progress` follows
    the lines; its `result` is `{lines, applied, rejected, errors: [{line, sku, reason}]}`
    (at most 1000 errors listed; `line` counts the header as line 1)."""
    body = await request.body()
    job = await request_import(m.uow, request.headers.get("content-type", ""), body, mode)
    return await m.respond(202, job, {"Location": job.links.self})
