"""Audit entries: written from the outbox's ``audit`` jobs, exactly once each, and read."""

from __future__ import annotations

from shared.db.connection import Connection

# One statement: claim a batch of pending audit jobs (SKIP LOCKED, so any number of workers
# drain side by side), write their entries (the unique event id makes a re-run a no-op), and
# complete the jobs. The transaction commits all three or none.
_DRAIN_BATCH = """
WITH batch AS (
    SELECT id, payload, request_id, actor_key_id, created_at
    FROM jobs
    WHERE kind = 'audit' AND status = 'queued'
    ORDER BY created_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), written AS (
    INSERT INTO audit_entries
        (event_id, action, actor_key_id, actor_name, request_id, subject, skus, payload,
         created_at)
    SELECT b.id, b.payload->>'action', b.actor_key_id, b.payload->'actor'->>'name',
           b.request_id, b.payload->>'subject',
           ARRAY(SELECT jsonb_array_elements_text(b.payload->'skus')),
           b.payload->'payload', b.created_at
    FROM batch b
    ORDER BY b.created_at, b.id
    ON CONFLICT (event_id) DO NOTHING
)
UPDATE jobs j
SET status = 'complete', progress = 100, attempts = j.attempts + 1,
    started_at = coalesce(j.started_at, now()), finished_at = now(),
    enqueued_at = coalesce(j.enqueued_at, now())
FROM batch
WHERE j.id = batch.id
"""


async def drain_batch(conn: Connection, batch_size: int) -> int:
    """Write up to ``batch_size`` pending audit entries; returns how many jobs completed."""
    async with conn.transaction():
        result: str = await conn.execute(_DRAIN_BATCH, batch_size)
    return int(result.split()[-1])


async def pending_older_than(conn: Connection, seconds: float) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'audit' AND status = 'queued'"
            " AND created_at < now() - make_interval(secs => $1))",
            seconds,
        )
    )
