"""Tasks: each opens its own connection from the pool and calls a service."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from shared import idempotency
from shared.audit import service as audit
from shared.imports.service import purge_abandoned_uploads
from shared.jobs import service as jobs
from shared.reports.storage import purge_expired_reports
from worker.context import WorkerContext, context_of
from worker.jobs import JobRunner

log = logging.getLogger("stockroom.worker")

AUDIT_BATCH = 500
RELAY_PAGE = 1000


async def run_job(ctx: dict[str, Any], job_id: str, generation: int) -> None:
    """The ARQ function of every durable kind (registered once per kind, under the kind's
    name): ARQ delivered this copy of the job; the runner claims it and runs it."""
    runner: JobRunner = ctx["jobs"]
    await runner.run(uuid.UUID(job_id), generation)


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
    """Each second: hand to ARQ every queued job whose ARQ copy Redis does not hold (its
    hand-over failed, or Redis lost it: down, restarted, flushed), and wake an audit drain for
    events that waited too long (their wake-up was lost the same ways)."""
    state = context_of(ctx)
    async with state.db.acquire() as conn:
        audit_waiting = await audit.pending_older_than(conn, 1.0)
    if audit_waiting:
        # Under a fresh id: the coalesced drain's id can be held by ARQ after a worker died
        # while running it, and must not hold back the audit log.
        await state.queue.follow_up_audit_drain(0)
    handed = await relay_jobs(state)
    if handed:
        log.warning("relay handed jobs to ARQ", extra={"count": handed})


async def relay_jobs(state: WorkerContext) -> int:
    """Every queued job, a page at a time: those whose ARQ copy is lost (missing, or started
    by a worker that died before claiming it) are handed over again (under their current
    generation's id, deferred to their due time). Returns how many."""
    handed = 0
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with state.db.acquire() as conn:
            page = await jobs.queued_after(conn, after, RELAY_PAGE)
        if not page:
            return handed
        lost = await state.queue.lost(page)
        if lost:
            await state.queue.forget(lost)  # a dead worker's copy, with its in-progress key
            handed += await state.queue.hand_over(lost)
        if len(page) < RELAY_PAGE:
            return handed
        last = page[-1]
        assert last.due is not None
        after = (last.due, last.id)


async def purge_expired(ctx: dict[str, Any]) -> None:
    """Idempotency records past 24 h; reports past their retention, and orphan chunks; the
    files of imports that ended without completing, past theirs."""
    state = context_of(ctx)
    async with state.db.acquire() as conn:
        while await idempotency.purge_expired(conn) > 0:
            pass
        expired = await purge_expired_reports(conn)
        uploads = await purge_abandoned_uploads(conn, state.settings.import_upload_retention_hours)
    if expired:
        log.info("expired reports purged", extra={"count": expired})
    if uploads:
        log.info("abandoned import uploads purged", extra={"count": uploads})
