"""The job records under ARQ's deliveries: the worker's statements (claim of a delivered copy
with generation fencing, batched lease renewal and completion, hand-back) and the relay's read,
against the real database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs import service as jobs
from shared.jobs.kinds import JobKind, JobStatus
from shared.jobs.outbox import create_job

WEBHOOK = {"type": "stock.low", "data": {"sku": "X", "on_hand": 0, "reorder_point": 1}}


async def insert(db: Database, kind: JobKind = JobKind.webhook, n: int = 1) -> list[uuid.UUID]:
    async with db.transaction() as conn:
        uow = UnitOfWork(conn, Actor.system("req-1"))
        return [await create_job(uow, kind, WEBHOOK, 5) for _ in range(n)]


async def status_of(db: Database, job_id: uuid.UUID) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, attempts, progress, worker_id, finished_at, result"
            " FROM jobs WHERE id = $1",
            job_id,
        )
    return dict(row)


async def test_a_claim_takes_only_a_queued_job_of_the_generation_its_copy_names(
    db: Database,
) -> None:
    ours, stale, cancelled = await insert(db, n=3)
    (audit,) = await insert(db, kind=JobKind.audit)  # drained by drain_audit, never claimed
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET generation = 1 WHERE id = $1", stale)
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", cancelled)
        leases = [(ours, 0), (stale, 0), (cancelled, 0), (audit, 0)]
        claimed = await jobs.claim(conn, "w:1", leases)
        # a duplicate delivery of the same copy gets nothing
        assert await jobs.claim(conn, "w:2", [(ours, 0)]) == []
    assert [(j.id, j.generation, j.attempt) for j in claimed] == [(ours, 0, 1)]
    assert claimed[0].request_id == "req-1" and claimed[0].kind == "webhook"
    assert (await status_of(db, ours))["worker_id"] == "w:1"
    for job_id in (stale, cancelled, audit):
        assert (await status_of(db, job_id))["status"] == "queued"


async def test_workers_racing_for_the_same_copies_claim_each_job_once(db: Database) -> None:
    ids = await insert(db, n=60)
    leases = [(job_id, 0) for job_id in ids]

    async def claimer(worker: str) -> list[uuid.UUID]:
        async with db.pool.acquire() as conn:
            return [j.id for j in await jobs.claim(conn, worker, leases)]

    results = await asyncio.gather(*(claimer(f"w:{i}") for i in range(4)))
    claimed = [job_id for taken in results for job_id in taken]
    assert len(claimed) == len(set(claimed)) == 60 and set(claimed) == set(ids)
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE attempts <> 1") == 0


async def test_renewal_completion_and_hand_back_in_batches(db: Database) -> None:
    ids = await insert(db, n=4)
    async with db.pool.acquire() as conn:
        leases = {j.id: j.lease for j in await jobs.claim(conn, "w:1", [(i, 0) for i in ids])}
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", ids[1])
        await conn.execute("UPDATE jobs SET worker_id = 'w:other' WHERE id = $1", ids[2])
        renewed = await jobs.renew_leases(conn, "w:1", [leases[i] for i in ids])
        assert renewed == {ids[0]: False, ids[1]: True, ids[3]: False}  # ids[2]: lost
        completed = await jobs.complete_many(
            conn, "w:1", [(leases[ids[0]], {"n": 0}), (leases[ids[2]], {"n": 2})]
        )
        assert completed == {ids[0]}
        back = await jobs.hand_back(conn, "w:1", [leases[ids[1]], leases[ids[3]]])
        assert [(j.id, j.generation) for j in back] == [(ids[3], 1)]  # the copy to hand over
    done = await status_of(db, ids[0])
    assert done["status"] == "complete" and done["result"] == {"n": 0}
    # handed back without counting the attempt; a cancel requested meanwhile wins
    assert (await status_of(db, ids[1]))["status"] == "cancelled"
    back = await status_of(db, ids[3])
    assert back["status"] == "queued" and back["attempts"] == 0 and back["worker_id"] is None


async def test_a_lapsed_claim_changes_nothing_even_in_the_worker_that_claims_it_again(
    db: Database,
) -> None:
    """A worker cut off from the database for longer than the lease: the reaper returns its
    job, and the same worker (same worker id) may claim it again. The first copy's writes name
    its generation: none of them touches the new claim."""
    (job_id,) = await insert(db)
    async with db.pool.acquire() as conn:
        (first,) = await jobs.claim(conn, "w:1", [(job_id, 0)])
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
        reclaimed = await jobs.reclaim_expired(conn)
        assert [(j.id, j.generation) for j in reclaimed] == [(job_id, first.generation + 1)]
        assert await jobs.claim(conn, "w:1", [first.lease]) == []  # the stale copy
        (second,) = await jobs.claim(conn, "w:1", [reclaimed[0].lease])
        assert second.id == job_id and second.generation == first.generation + 1
        # every write of the first copy is fenced off
        assert await jobs.renew_leases(conn, "w:1", [first.lease]) == {}
        await jobs.set_progress(conn, first.lease, "w:1", 50)
        assert await jobs.complete_many(conn, "w:1", [(first.lease, {"copy": 1})]) == set()
        await jobs.fail(conn, first.lease, "w:1", "boom")
        await jobs.mark_cancelled(conn, first.lease, "w:1")
        assert await jobs.schedule_retry(conn, first.lease, "w:1", "TimeoutError", 0) is None
        assert await jobs.hand_back(conn, "w:1", [first.lease]) == []
        row = await status_of(db, job_id)
        assert (row["status"], row["progress"], row["attempts"]) == ("in_progress", 0, 2)
        # the second copy's own writes land
        assert await jobs.renew_leases(conn, "w:1", [second.lease]) == {job_id: False}
        assert await jobs.complete_many(conn, "w:1", [(second.lease, {"copy": 2})]) == {job_id}
    done = await status_of(db, job_id)
    assert done["status"] == "complete" and done["result"] == {"copy": 2}


async def test_a_retry_of_a_job_whose_cancel_was_requested_cancels_it(db: Database) -> None:
    (job_id,) = await insert(db)
    async with db.pool.acquire() as conn:
        (claimed,) = await jobs.claim(conn, "w:1", [(job_id, 0)])
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
        assert await jobs.schedule_retry(conn, claimed.lease, "w:1", "TimeoutError", 0.5) is None
    row = await status_of(db, job_id)
    assert row["status"] == "cancelled" and row["finished_at"] is not None


async def test_a_retry_is_the_next_generation_due_after_its_backoff(db: Database) -> None:
    (job_id,) = await insert(db)
    async with db.pool.acquire() as conn:
        (claimed,) = await jobs.claim(conn, "w:1", [(job_id, 0)])
        again = await jobs.schedule_retry(conn, claimed.lease, "w:1", "TimeoutError", 30)
        now = await conn.fetchval("SELECT now()")
    assert again is not None and (again.id, again.generation) == (job_id, 1)
    assert again.due is not None and 29 < (again.due - now).total_seconds() <= 30


async def test_the_relay_reads_every_queued_job_a_page_at_a_time(db: Database) -> None:
    ids = set(await insert(db, n=7))
    await insert(db, kind=JobKind.audit)
    async with db.pool.acquire() as conn:
        done = next(iter(ids))
        await conn.execute("UPDATE jobs SET status = 'complete' WHERE id = $1", done)
        seen: list[uuid.UUID] = []
        after = None
        while page := await jobs.queued_after(conn, after, 2):
            seen += [j.id for j in page]
            after = (page[-1].due, page[-1].id)
    assert len(seen) == len(set(seen)) == 6 and set(seen) == ids - {done}


async def generic_plan(conn: Any, sql: str, arguments: str) -> str:
    """EXPLAIN of ``sql`` as the generic plan that a prepared statement settles on after
    five runs (the one that serves most executions)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE plan_under_test AS {sql}")
        explained = await conn.fetch(f"EXPLAIN EXECUTE plan_under_test({arguments})")
        await conn.execute("DEALLOCATE plan_under_test")
    return "\n".join(r[0] for r in explained)


async def test_the_relays_read_uses_its_partial_index(db: Database) -> None:
    """Under a realistic mix (many finished jobs, a backlog of audit events), the relay's read
    uses ix_jobs_due, also as the generic plan that a prepared statement ends up with."""
    async with db.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO jobs (kind, payload, max_attempts, status)
            SELECT CASE WHEN g % 10 = 0 THEN 'webhook' ELSE 'audit' END, '{}', 5,
                   CASE WHEN g % 5 = 0 THEN 'queued' ELSE 'complete' END
            FROM generate_series(1, 20000) AS g
            """
        )
        await conn.execute("ANALYZE jobs")
        plan = await generic_plan(
            conn, jobs.QUEUED_AFTER, "'-infinity', '00000000-0000-0000-0000-000000000000', 50"
        )
        indexes = {
            r["indexname"]
            for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")
        }
    assert "Index Scan using ix_jobs_due on jobs" in plan, plan
    assert "Seq Scan" not in plan, plan
    # each one read by a query: the API's lists and queue stats, the audit drain, the relay
    assert indexes == {
        "pk_jobs",
        "ix_jobs_created_at_id",
        "ix_jobs_status_created_at_id",
        "ix_jobs_kind_created_at_id",
        "ix_jobs_audit_pending",
        "ix_jobs_due",
    }


class Recording:
    """A connection that remembers the last statement ``fetch`` sent (to EXPLAIN it)."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.sql = conn, ""

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.sql = sql
        return await self.conn.fetch(sql, *args)


async def test_the_dead_letter_view_reads_the_status_index_as_a_generic_plan(
    db: Database,
) -> None:
    """``GET /jobs?status=failed`` among many finished jobs: the statement that list_jobs
    sends reads ix_jobs_status_created_at_id also as the generic plan a prepared statement
    settles on after five runs (not a walk of every job in created_at order)."""

    async with db.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO jobs (kind, payload, max_attempts, status)
            SELECT 'audit', '{}', 5, CASE WHEN g % 5000 = 0 THEN 'failed' ELSE 'complete' END
            FROM generate_series(1, 20000) AS g
            """
        )
        await conn.execute("ANALYZE jobs")
        recording = Recording(conn)
        page = await jobs.list_jobs(
            recording,  # type: ignore[arg-type]
            status=JobStatus.failed,
            kind=None,
            limit=20,
            cursor=None,
        )
        assert len(page.items) == 4
        plan = await generic_plan(conn, recording.sql, "'failed', 21")
    assert "ix_jobs_status_created_at_id" in plan, plan

    # and the keyset pages, filtered or not, add up to the same jobs, newest first
    async with db.acquire() as conn:
        for status, kind, expected in ((JobStatus.failed, None, 4), (None, "audit", 20000)):
            seen: list[Any] = []
            cursor = None
            while True:
                page = await jobs.list_jobs(
                    conn, status=status, kind=kind, limit=1 if status else 100, cursor=cursor
                )
                seen += [(j.created_at, j.id) for j in page.items]
                if (cursor := page.next_cursor) is None:
                    break
            assert len(set(seen)) == len(seen) == expected
            assert seen == sorted(seen, reverse=True)


async def test_a_list_of_one_kind_reads_the_kind_index_as_a_generic_plan(db: Database) -> None:
    """``GET /jobs?kind=webhook``: a few webhook jobs among many audit jobs are found through
    ix_jobs_kind_created_at_id (audit jobs stay out of it), also as a generic plan."""

    async with db.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO jobs (kind, payload, max_attempts, status)
            SELECT CASE WHEN g % 5000 = 0 THEN 'webhook' ELSE 'audit' END, '{}', 5, 'complete'
            FROM generate_series(1, 20000) AS g
            """
        )
        await conn.execute("ANALYZE jobs")
        recording = Recording(conn)
        page = await jobs.list_jobs(
            recording,  # type: ignore[arg-type]
            status=None,
            kind="webhook",
            limit=20,
            cursor=None,
        )
        assert len(page.items) == 4
        plan = await generic_plan(conn, recording.sql, "'webhook', 21")
    assert "ix_jobs_kind_created_at_id" in plan, plan
