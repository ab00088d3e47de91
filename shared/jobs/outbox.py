"""Writing jobs: a job record is also its outbox entry, inserted in the caller's transaction.

Audit events are drained in batches by the worker's ``drain_audit``, woken through Redis after
the commit (``shared.queue``). Every other kind is claimed by the workers straight from this
table (``shared.jobs.service.claim_due``): the row is the queue, and the wake-up is a
PostgreSQL ``NOTIFY`` on ``JOBS_CHANNEL`` sent by the same statement that inserts the row. A
notification is delivered when, and only when, the transaction commits, so nothing has to be
handed over after the commit and nothing is lost if the process dies right after it; a worker
that misses a notification finds the job on its next poll."""

from __future__ import annotations

import uuid
from typing import Any

from shared.db.unit_of_work import NewJob, UnitOfWork
from shared.jobs.kinds import JobKind

# One channel per database: the workers of a database share its job table.
JOBS_CHANNEL = "stockroom_jobs"

_INSERT_JOB = """
INSERT INTO jobs (kind, payload, max_attempts, request_id, actor_key_id, retry_of)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id
"""

# NOTIFY takes a database-wide lock at commit that serializes notifying transactions: cheap
# for webhooks, reports and retries, which is why the per-request audit events do not notify.
_INSERT_JOB_AND_NOTIFY = f"""
INSERT INTO jobs (kind, payload, max_attempts, request_id, actor_key_id, retry_of)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, pg_notify('{JOBS_CHANNEL}', '')
"""


async def create_job(
    uow: UnitOfWork,
    kind: JobKind,
    payload: dict[str, Any],
    max_attempts: int,
    retry_of: uuid.UUID | None = None,
) -> uuid.UUID:
    job_id: uuid.UUID = await uow.conn.fetchval(
        _INSERT_JOB if kind == JobKind.audit else _INSERT_JOB_AND_NOTIFY,
        kind.value,
        payload,
        max_attempts,
        uow.actor.request_id,
        uow.actor.key_id,
        retry_of,
    )
    uow.new_jobs.append(NewJob(id=job_id, kind=kind.value))
    return job_id
