"""Tasks: each opens its own connection from the pool and calls a service."""

from __future__ import annotations

import logging
from typing import Any

from shared import idempotency
from shared.audit import service as audit
from shared.reports.storage import purge_expired_reports
from worker.context import context_of
from worker.jobs import JobDrain

log = logging.getLogger("stockroom.worker")

AUDIT_BATCH = 500


async def drain_audit(ctx: dict[str, Any]) -> int:
    """Write every pending audit entry, a batch per transaction, until none is left."""
    state = context_of(ctx)
    total = 0
    async with state.db.acquire() as conn:
        while True:
            done = await audit.drain_batch(conn, AUDIT_BATCH)
            total += done
            if done < AUDIT_BATCH:
                break
    if not state.queue.is_follow_up_drain(ctx.get("job_id")):
        await state.queue.follow_up_audit_drain()
    if total:
        log.debug("audit entries written", extra={"count": total})
    return total


async def relay_outbox(ctx: dict[str, Any]) -> None:
    """Wake an audit drain for events that waited too long (their wake-up was lost: Redis was
    down, or the API process died after commit). (Jobs of workers that stopped renewing their
    lease are returned by every worker's job drain, which needs no Redis.)"""
    state = context_of(ctx)
    async with state.db.acquire() as conn:
        if await audit.pending_older_than(conn, 1.0):
            # Under a fresh id: the coalesced drain's id can be held for a minute by ARQ after
            # a worker died while running it, and must not hold back the audit log.
            await state.queue.follow_up_audit_drain(0)


async def wake_job_drain(ctx: dict[str, Any], *_: Any) -> None:
    """``run_job`` as API replicas of the previous release enqueue it during a rolling
    upgrade: the job is a row that the drain claims anyway; this only wakes it."""
    drain: JobDrain = ctx["drain"]
    drain.wake()


async def purge_expired(ctx: dict[str, Any]) -> None:
    """Idempotency records past 24 h; reports past their retention, and orphan chunks."""
    state = context_of(ctx)
    async with state.db.acquire() as conn:
        while await idempotency.purge_expired(conn) > 0:
            pass
        expired = await purge_expired_reports(conn)
    if expired:
        log.info("expired reports purged", extra={"count": expired})
