"""Job records: status, the dead-letter view, cancel, retry."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.auth import ConnDep, requires
from api.mutations import Mutation, MutationRoute, mutates
from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.jobs import service
from shared.jobs.kinds import FINISHED_STATUSES, JobStatus
from shared.jobs.schemas import Job
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page

router = APIRouter(route_class=MutationRoute, prefix="/jobs", tags=["jobs"])

JobsRead = Annotated[Principal, requires(Scope.jobs_read)]
JobsWrite = Annotated[Mutation, mutates(Scope.jobs_write)]

# Poll hints: a queued job usually starts within milliseconds; a running one takes longer.
RETRY_AFTER = {JobStatus.queued: "1", JobStatus.in_progress: "2"}


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: uuid.UUID, conn: ConnDep, _: JobsRead, response: Response) -> Job:
    """A job's record. While it is not finished, `Retry-After` says when to poll again."""
    job = await service.get_job(conn, job_id)
    if job.status not in FINISHED_STATUSES:
        response.headers["Retry-After"] = RETRY_AFTER[job.status]
    return job


@router.get("", response_model=Page[Job])
async def list_jobs(
    conn: ConnDep,
    _: JobsRead,
    status: JobStatus | None = None,
    kind: Annotated[str | None, Query(max_length=50)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Job]:
    """Newest first. `status=failed` is the dead-letter view."""
    return await service.list_jobs(conn, status=status, kind=kind, limit=limit, cursor=cursor)


@router.post("/{job_id}/cancel", status_code=202, response_model=Job)
async def cancel_job(job_id: uuid.UUID, m: JobsWrite) -> Response:
    """A queued job never runs; a running one is stopped within about a second. A finished
    job (or an audit job) → 409."""
    job = await service.cancel_job(m.uow, job_id)
    return await m.respond(202, job)


@router.post("/{job_id}/retry", status_code=202, response_model=Job)
async def retry_job(job_id: uuid.UUID, m: JobsWrite) -> Response:
    """A new job with the same work, `retry_of` this failed or cancelled one."""
    job = await service.retry_job(m.uow, job_id)
    return await m.respond(202, job, {"Location": job.links.self})
