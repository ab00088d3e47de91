"""Audit entries: written from the outbox's ``audit`` jobs, exactly once each, and read."""

from __future__ import annotations

from datetime import datetime

from shared.audit.schemas import AuditActor, AuditEntry
from shared.db.connection import Connection
from shared.pagination import Page, decode_cursor, encode_cursor

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


async def list_entries(
    conn: Connection,
    *,
    action: str | None,
    sku: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> Page[AuditEntry]:
    """Newest first, keyset-paginated on the entry id; ``[since, until)`` on the time of the
    mutation."""
    before = decode_cursor("audit", cursor, (int,))[0] if cursor else None
    rows = await conn.fetch(
        """
        SELECT id, action, actor_key_id, actor_name, request_id, subject, payload, created_at
        FROM audit_entries
        WHERE ($1::text IS NULL OR action = $1)
          AND ($2::text IS NULL OR skus @> ARRAY[$2::text])
          AND ($3::timestamptz IS NULL OR created_at >= $3)
          AND ($4::timestamptz IS NULL OR created_at < $4)
          AND ($5::bigint IS NULL OR id < $5)
        ORDER BY id DESC
        LIMIT $6
        """,
        action,
        sku,
        since,
        until,
        before,
        limit + 1,
    )
    items = [
        AuditEntry(
            id=r["id"],
            action=r["action"],
            actor=AuditActor(key_id=r["actor_key_id"], name=r["actor_name"]),
            request_id=r["request_id"],
            subject=r["subject"],
            payload=r["payload"],
            created_at=r["created_at"],
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return Page[AuditEntry](
        items=items, next_cursor=encode_cursor("audit", [items[-1].id]) if more else None
    )
