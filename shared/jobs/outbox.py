"""Writing jobs: a job record is also its outbox entry, inserted in the caller's transaction.
``enqueued_at`` stays NULL until the queue has it (see ``shared.queue``)."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from shared.db.connection import Connection
from shared.db.unit_of_work import NewJob, UnitOfWork
from shared.jobs.kinds import JobKind

_INSERT_JOB = """
INSERT INTO jobs (kind, payload, max_attempts, request_id, actor_key_id, retry_of)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id
"""


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


async def mark_enqueued(conn: Connection, job_ids: list[uuid.UUID]) -> None:
    await conn.execute("UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1::uuid[])", job_ids)


class _Enqueuer(Protocol):
    async def enqueue_run_job(
        self, job_id: uuid.UUID, generation: int, defer_seconds: float = 0
    ) -> bool: ...


async def relay_pending(conn: Connection, queue: _Enqueuer, batch: int = 500) -> int:
    """Re-send queued jobs the queue may not have: never handed over (older than 2 s, so the
    request that wrote them had its chance), or handed over long ago and never started
    (Redis lost them). Re-sending is safe: the queue drops a job id it already holds, and a
    job that has finished is skipped by its status."""
    async with conn.transaction():
        rows = await conn.fetch(
            """
            SELECT id, generation,
                   greatest(extract(epoch FROM run_after - now()), 0)::float8 AS defer
            FROM jobs
            WHERE status = 'queued' AND kind <> 'audit'
              AND ((enqueued_at IS NULL AND created_at < now() - interval '2 seconds')
                   OR (enqueued_at < now() - interval '10 minutes'
                       AND run_after < now() - interval '10 minutes'))
            ORDER BY created_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
            """,
            batch,
        )
        for row in rows:
            await queue.enqueue_run_job(row["id"], row["generation"], row["defer"])
        if rows:
            await mark_enqueued(conn, [row["id"] for row in rows])
    return len(rows)
