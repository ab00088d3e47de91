"""Job records: reads for the API, cancel and retry, and the worker's side of a job's life —
claim a delivered job under a lease, renew, finish, fail, hand back, and reclaim from dead
workers; and the relay's read of the jobs waiting for ARQ.

ARQ carries the jobs (``shared.queue``); this table stays the truth. The ARQ function claims
the record it names — the job *and its generation* — before it runs the handler; the claim
takes only a queued job of that generation, so a duplicate delivery, a stale copy or a second
worker gets nothing. A job runs under a lease (``lease_until``) that its worker renews every
second. A worker that dies (SIGKILL, lost host) stops renewing; the reaper puts the job back
in the queue under a new generation when the lease lapses, whatever the job's own length, and
it is handed to ARQ again under that generation's id. ``generation`` counts the times a job
went back to the queue (retry, hand-back, reclaim)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.audit.events import record_event
from shared.db.connection import Connection
from shared.db.unit_of_work import UnitOfWork
from shared.errors import JobStateConflict, NotFound
from shared.jobs.kinds import FINISHED_STATUSES, JobKind, JobStatus
from shared.jobs.outbox import create_job
from shared.jobs.schemas import Job, JobLinks, QueuedJob, QueueStats
from shared.pagination import Page, decode_cursor, encode_cursor
from shared.urls import job_path, report_path

LEASE_SECONDS = 15
# The worker's own statements on jobs are short: one that takes longer is stuck (a half-open
# connection after a failover, say) and is given up rather than hanging the drain.
STATEMENT_TIMEOUT_SECONDS = 10
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0

_COLUMNS = (
    "id, kind, status, progress, attempts, max_attempts, created_at, started_at, finished_at,"
    " result, error, retry_of, request_id"
)


def _job(row: Any) -> Job:
    data = dict(row)
    base = job_path(data["id"])
    status = JobStatus(data["status"])
    links = JobLinks(
        self=base,
        cancel=f"{base}/cancel" if status not in FINISHED_STATUSES else None,
        retry=f"{base}/retry" if status in (JobStatus.failed, JobStatus.cancelled) else None,
        retry_of=job_path(data["retry_of"]) if data["retry_of"] else None,
        report=report_path(data["id"]) if data["kind"] == JobKind.report else None,
    )
    return Job(**data, links=links)


def backoff_seconds(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))],
    never below a tenth of the ceiling."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1))
    return float(max(ceiling / 10, (rng or random).uniform(0, ceiling)))


# --- API side --------------------------------------------------------------------------------


async def get_job(conn: Connection, job_id: uuid.UUID) -> Job:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)  # noqa: S608
    if row is None:
        raise NotFound(f"no job {job_id}")
    return _job(row)


async def list_jobs(
    conn: Connection,
    *,
    status: JobStatus | None,
    kind: str | None,
    limit: int,
    cursor: str | None,
) -> Page[Job]:
    """Newest first, keyset-paginated on ``(created_at, id)``."""
    if cursor:
        stamp, last_id = decode_cursor("jobs", cursor, (datetime, uuid.UUID))
        after: tuple[datetime, uuid.UUID] | None = (stamp, last_id)
    else:
        after = None
    # Only the filters given, so that each combination is its own prepared statement: with
    # "$1 IS NULL OR status = $1" the generic plan that a prepared statement settles on walks
    # ix_jobs_created_at_id for every filter, and the dead-letter view (a few failed jobs among
    # millions) became a scan of the table.
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        args.append(status.value)
        where.append(f"status = ${len(args)}")
    if kind is not None:
        args.append(kind)
        where.append(f"kind = ${len(args)}")
        if kind != JobKind.audit:  # lets the generic plan use ix_jobs_kind_created_at_id
            where.append("kind <> 'audit'")
    if after is not None:
        args += after
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit + 1)
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM jobs
        {"WHERE " + " AND ".join(where) if where else ""}
        ORDER BY created_at DESC, id DESC
        LIMIT ${len(args)}
        """,  # noqa: S608
        *args,
    )
    items = [_job(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor("jobs", [last.created_at.isoformat(), str(last.id)])
    return Page[Job](items=items, next_cursor=next_cursor)


async def cancel_job(uow: UnitOfWork, job_id: uuid.UUID) -> Job:
    """A queued job is cancelled at once and never runs; a running one is flagged, and its
    worker stops it within about a second (the lease renewal reads the flag)."""
    row = await uow.conn.fetchrow(
        f"""
        UPDATE jobs SET
            status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
            finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
            cancel_requested = true
        WHERE id = $1 AND status IN ('queued', 'in_progress') AND kind <> 'audit'
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        job_id,
    )
    if row is None:
        current = await get_job(uow.conn, job_id)
        if current.kind == JobKind.audit:
            raise JobStateConflict("audit jobs cannot be cancelled: every mutation is audited")
        raise JobStateConflict(f"job {job_id} is {current.status.value}; it cannot be cancelled")
    await record_event(uow, "job.cancelled", f"job:{job_id}", [], {"job_id": str(job_id)})
    return _job(row)


async def retry_job(uow: UnitOfWork, job_id: uuid.UUID) -> Job:
    """A new job with the same kind and payload, ``retry_of`` the failed or cancelled one."""
    original = await uow.conn.fetchrow(
        "SELECT kind, payload, status, max_attempts FROM jobs WHERE id = $1 FOR UPDATE", job_id
    )
    if original is None:
        raise NotFound(f"no job {job_id}")
    if original["status"] not in (JobStatus.failed, JobStatus.cancelled):
        raise JobStateConflict(
            f"job {job_id} is {original['status']}; only failed or cancelled jobs are retried"
        )
    new_id = await create_job(
        uow,
        JobKind(original["kind"]),
        original["payload"],
        original["max_attempts"],
        retry_of=job_id,
    )
    await record_event(
        uow, "job.retried", f"job:{job_id}", [], {"job_id": str(job_id), "new_job_id": str(new_id)}
    )
    return await get_job(uow.conn, new_id)


async def queue_stats(conn: Connection) -> QueueStats:
    row = await conn.fetchrow(
        """
        SELECT
            count(*) FILTER (WHERE status = 'queued' AND run_after <= now()) AS queued,
            count(*) FILTER (WHERE status = 'in_progress') AS in_progress,
            count(*) FILTER (WHERE status = 'queued' AND run_after > now()) AS deferred,
            coalesce(extract(epoch FROM now() - min(created_at)
                FILTER (WHERE status = 'queued' AND run_after <= now())), 0)::float8
                AS oldest_queued_age_seconds,
            (SELECT count(*) FROM jobs WHERE status = 'failed'
                AND finished_at > now() - interval '1 hour') AS failed_last_hour
        FROM jobs WHERE status IN ('queued', 'in_progress')
        """
    )
    assert row is not None
    return QueueStats(**dict(row))


# Bucket bounds (seconds) of the job-duration histogram read from the records.
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)


@dataclass(frozen=True, slots=True)
class JobRecordStats:
    """One (kind, status) of the job records: how many, and for finished ones (complete or
    failed) their durations, first start to finish: cumulative counts per
    ``DURATION_BUCKETS`` bound, and the sum."""

    kind: str
    status: str
    count: int
    timed: int
    seconds: float
    buckets: tuple[int, ...]


_DURATION = "extract(epoch FROM j.finished_at - j.started_at)"
_BUCKET_COUNTS = ", ".join(
    f"count(*) FILTER (WHERE t.timed AND {_DURATION} <= {bound})" for bound in DURATION_BUCKETS
)
JOB_RECORD_STATS = f"""
SELECT j.kind, j.status, count(*) AS count,
    count(*) FILTER (WHERE t.timed) AS timed,
    coalesce(sum({_DURATION}) FILTER (WHERE t.timed), 0)::float8 AS seconds,
    ARRAY[{_BUCKET_COUNTS}] AS buckets
FROM jobs j, LATERAL (SELECT j.status IN ('complete', 'failed')
                          AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL) t(timed)
GROUP BY j.kind, j.status
"""  # noqa: S608


async def job_record_stats(conn: Connection) -> list[JobRecordStats]:
    """Every job record by kind and status, with the durations of the finished ones: the
    whole picture of the queue's outcomes, from the durable records (``/metrics``)."""
    rows = await conn.fetch(JOB_RECORD_STATS, timeout=STATEMENT_TIMEOUT_SECONDS)
    return [
        JobRecordStats(
            kind=r["kind"],
            status=r["status"],
            count=r["count"],
            timed=r["timed"],
            seconds=r["seconds"],
            buckets=tuple(r["buckets"]),
        )
        for r in rows
    ]


# --- worker side -----------------------------------------------------------------------------


# A claim: the job and its generation, which every return to the queue (retry, hand-back,
# reclaim) increments. Every write of a claim's outcome, lease or progress names both, so a
# copy whose lease lapsed — even one in the same worker process as the job's next claim —
# can change nothing.
Lease = tuple[uuid.UUID, int]


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    request_id: str | None
    generation: int

    @property
    def lease(self) -> Lease:
        return (self.id, self.generation)


_CLAIMED = "j.id, j.kind, j.payload, j.attempts, j.max_attempts, j.request_id, j.generation"


def _claimed(row: Any) -> ClaimedJob:
    return ClaimedJob(
        id=row["id"],
        kind=row["kind"],
        payload=row["payload"],
        attempt=row["attempts"],
        max_attempts=row["max_attempts"],
        request_id=row["request_id"],
        generation=row["generation"],
    )


# The claim of the jobs ARQ has just delivered, in one statement: each under a fresh lease,
# counting an attempt, if it is still queued under the generation its ARQ copy names and its
# cancel was not requested. Two workers racing for a job: the second waits for the first's
# row lock, then finds the job in progress and takes nothing.
CLAIM = f"""
UPDATE jobs j SET status = 'in_progress', attempts = j.attempts + 1,
    started_at = coalesce(j.started_at, now()), worker_id = $3,
    lease_until = now() + make_interval(secs => {LEASE_SECONDS})
FROM unnest($1::uuid[], $2::int[]) AS c(id, generation)
WHERE j.id = c.id AND j.generation = c.generation AND j.status = 'queued'
  AND NOT j.cancel_requested AND j.kind <> 'audit'
RETURNING {_CLAIMED}
"""  # noqa: S608


async def claim(conn: Connection, worker_id: str, leases: list[Lease]) -> list[ClaimedJob]:
    """Claim these delivered jobs for this worker (``CLAIM``): the ones it may run."""
    rows = await conn.fetch(
        CLAIM,
        [job_id for job_id, _ in leases],
        [generation for _, generation in leases],
        worker_id,
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )
    return [_claimed(r) for r in rows]


async def renew_leases(
    conn: Connection, worker_id: str, leases: list[Lease]
) -> dict[uuid.UUID, bool]:
    """Extend the leases of this worker's running jobs in one statement; returns, for each job
    still ours, whether its cancellation was requested. A job missing from the answer is no
    longer ours (its lease lapsed and it was reclaimed)."""
    rows = await conn.fetch(
        f"""
        UPDATE jobs j SET lease_until = now() + make_interval(secs => {LEASE_SECONDS})
        FROM unnest($1::uuid[], $2::int[]) AS l(id, generation)
        WHERE j.id = l.id AND j.generation = l.generation AND j.worker_id = $3
          AND j.status = 'in_progress'
        RETURNING j.id, j.cancel_requested
        """,  # noqa: S608
        [job_id for job_id, _ in leases],
        [generation for _, generation in leases],
        worker_id,
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )
    return {r["id"]: r["cancel_requested"] for r in rows}


_OURS = "id = $1 AND generation = $2 AND worker_id = $3 AND status = 'in_progress'"


async def set_progress(conn: Connection, lease: Lease, worker_id: str, percent: int) -> None:
    await conn.execute(
        f"UPDATE jobs SET progress = $4 WHERE {_OURS}",  # noqa: S608
        *lease,
        worker_id,
        max(0, min(100, percent)),
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )


async def complete_many(
    conn: Connection, worker_id: str, results: list[tuple[Lease, dict[str, Any]]]
) -> set[uuid.UUID]:
    """Complete several jobs of this worker in one statement; returns the ids completed (a
    job whose lease was lost meanwhile is not)."""
    rows = await conn.fetch(
        """
        UPDATE jobs j SET status = 'complete', progress = 100, result = r.result, error = NULL,
            finished_at = now(), lease_until = NULL
        FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) AS r(id, generation, result)
        WHERE j.id = r.id AND j.generation = r.generation AND j.worker_id = $4
          AND j.status = 'in_progress'
        RETURNING j.id
        """,
        [job_id for (job_id, _), _ in results],
        [generation for (_, generation), _ in results],
        [result for _, result in results],
        worker_id,
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )
    return {r["id"] for r in rows}


async def fail(conn: Connection, lease: Lease, worker_id: str, error: str) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'failed', error = $4, finished_at = now(), lease_until = NULL"  # noqa: S608
        f" WHERE {_OURS}",
        *lease,
        worker_id,
        error[:4000],
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )


async def mark_cancelled(conn: Connection, lease: Lease, worker_id: str) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_until = NULL"  # noqa: S608
        f" WHERE {_OURS}",
        *lease,
        worker_id,
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )


_QUEUED = "id, generation, kind, run_after, status"


def _queued(row: Any) -> QueuedJob:
    return QueuedJob(
        id=row["id"], generation=row["generation"], kind=row["kind"], due=row["run_after"]
    )


async def schedule_retry(
    conn: Connection, lease: Lease, worker_id: str, error: str, delay: float
) -> QueuedJob | None:
    """Back to the queue under the next generation, due in ``delay`` seconds: the copy to hand
    to ARQ, or ``None`` when not requeued. A job whose cancel was requested meanwhile is
    cancelled instead (a queued job is never claimed once its cancel is requested)."""
    row = await conn.fetchrow(
        f"""
        UPDATE jobs SET error = $4, worker_id = NULL, lease_until = NULL,
            status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
            finished_at = CASE WHEN cancel_requested THEN now() END,
            run_after = now() + make_interval(secs => $5), generation = generation + 1
        WHERE {_OURS}
        RETURNING {_QUEUED}
        """,  # noqa: S608
        *lease,
        worker_id,
        error[:4000],
        delay,
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )
    return None if row is None or row["status"] != JobStatus.queued else _queued(row)


async def hand_back(conn: Connection, worker_id: str, leases: list[Lease]) -> list[QueuedJob]:
    """The worker is shutting down: return its jobs without counting the attempt, due now,
    under the next generation. Returns the copies to hand to ARQ (a job whose cancel was
    requested is cancelled instead)."""
    rows = await conn.fetch(
        """
        UPDATE jobs j SET attempts = greatest(j.attempts - 1, 0),
            status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
            finished_at = CASE WHEN j.cancel_requested THEN now() END,
            worker_id = NULL, lease_until = NULL, generation = j.generation + 1, run_after = now()
        FROM unnest($1::uuid[], $2::int[]) AS l(id, generation)
        WHERE j.id = l.id AND j.generation = l.generation AND j.worker_id = $3
          AND j.status = 'in_progress'
        RETURNING j.id, j.generation, j.kind, j.run_after, j.status
        """,
        [job_id for job_id, _ in leases],
        [generation for _, generation in leases],
        worker_id,
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )
    return [_queued(r) for r in rows if r["status"] == JobStatus.queued]


async def reclaim_expired(conn: Connection) -> list[QueuedJob]:
    """Jobs whose worker stopped renewing its lease go back to the queue under the next
    generation (the attempt that died counts). A job out of attempts fails instead; one whose
    cancel was requested is cancelled. Returns the requeued copies, to hand to ARQ."""
    rows = await conn.fetch(
        f"""
        UPDATE jobs SET
            status = CASE WHEN cancel_requested THEN 'cancelled'
                WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
            error = CASE WHEN NOT cancel_requested AND attempts >= max_attempts
                THEN 'worker lost while running the last attempt' ELSE error END,
            finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts
                THEN now() ELSE NULL END,
            worker_id = NULL, lease_until = NULL, generation = generation + 1,
            run_after = now()
        WHERE status = 'in_progress' AND kind <> 'audit' AND lease_until < now()
        RETURNING {_QUEUED}
        """,  # noqa: S608
        timeout=STATEMENT_TIMEOUT_SECONDS,
    )
    return [_queued(r) for r in rows if r["status"] == JobStatus.queued]


# The relay's read: queued jobs in ``(run_after, id)`` order after a point, a page at a time
# (reads ix_jobs_due).
QUEUED_AFTER = f"""
SELECT {_QUEUED} FROM jobs
WHERE status = 'queued' AND kind <> 'audit' AND (run_after, id) > ($1::timestamptz, $2::uuid)
ORDER BY run_after, id
LIMIT $3
"""  # noqa: S608
_BEFORE_ANY = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))


async def queued_after(
    conn: Connection, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[QueuedJob]:
    """The next page of queued jobs after ``after`` (``None``: the first page): the jobs
    whose ARQ copy must exist."""
    rows = await conn.fetch(
        QUEUED_AFTER, *(after or _BEFORE_ANY), limit, timeout=STATEMENT_TIMEOUT_SECONDS
    )
    return [_queued(r) for r in rows]
