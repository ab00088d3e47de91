"""Writing jobs: a job record is also its outbox entry, inserted in the caller's transaction.

The record is the truth; ARQ carries the job. After the commit the API hands each new job to
ARQ (``shared.queue.Queue.dispatch``), best effort; the worker tier's relay hands over every
queued job whose ARQ copy is missing (never sent, or lost by Redis), so a job written here is
never lost. Audit events are drained from this table in batches by a coalesced ARQ job."""

from __future__ import annotations

import uuid
from typing import Any

from shared.db.unit_of_work import NewJob, UnitOfWork
from shared.jobs.kinds import JobKind

# A job record's columns as written, with their types.
JOB_COLUMNS = {
    "kind": "text",
    "payload": "jsonb",
    "max_attempts": "int",
    "request_id": "text",
    "actor_key_id": "uuid",
    "retry_of": "uuid",
}


def job_insert(values: dict[str, str], source: str | None = None) -> str:
    """The one statement that writes a job record, as ``INSERT … SELECT`` of SQL expressions
    by column (parameters, or columns of ``source`` when a hot path writes its event in the
    statement that makes the change; a column not given is NULL). Returns the job's ``id``."""
    return (
        f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)})"  # noqa: S608
        f" SELECT {', '.join(values.get(column, 'NULL') for column in JOB_COLUMNS)}"
        + (f" FROM {source}" if source else "")
        + " RETURNING id"
    )


# $1 … $6 in JOB_COLUMNS' order
_INSERT_JOB = job_insert(
    {column: f"${n}::{type_}" for n, (column, type_) in enumerate(JOB_COLUMNS.items(), 1)}
)


async def create_job(
    uow: UnitOfWork,
    kind: JobKind,
    payload: dict[str, Any],
    max_attempts: int,
    retry_of: uuid.UUID | None = None,
) -> uuid.UUID:
    job_id: uuid.UUID = await uow.conn.fetchval(
        _INSERT_JOB,
        kind.value,
        payload,
        max_attempts,
        uow.actor.request_id,
        uow.actor.key_id,
        retry_of,
    )
    uow.new_jobs.append(NewJob(id=job_id, kind=kind.value))
    return job_id
