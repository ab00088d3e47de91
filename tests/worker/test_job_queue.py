"""The ``jobs`` table as the queue of durable jobs: the worker's statements (batch claim,
batched lease renewal and completion, hand-back) and the NOTIFY wake-up, against the real
database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs import service as jobs
from shared.jobs.kinds import JobKind, JobStatus
from shared.jobs.outbox import JOBS_CHANNEL, create_job
from tests.conftest import Env

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


async def test_claim_takes_due_jobs_oldest_first_up_to_the_limit(db: Database) -> None:
    first = await insert(db, n=3)
    await insert(db, kind=JobKind.audit)  # drained by drain_audit, never claimed here
    later, cancelled, oldest = await insert(db, n=3)
    async with db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE jobs SET run_after = now() + interval '1 hour' WHERE id = $1", later
        )
        await conn.execute(
            "UPDATE jobs SET run_after = now() - interval '1 minute' WHERE id = $1", oldest
        )
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", cancelled)
        one = await jobs.claim_due(conn, "w:1", 1)
        two = await jobs.claim_due(conn, "w:1", 2)
        rest = await jobs.claim_due(conn, "w:2", 10)
        none = await jobs.claim_due(conn, "w:2", 10)
    assert [j.id for j in one] == [oldest]
    assert len(two) == 2 and len(rest) == 1 and none == []
    assert {j.id for j in two + rest} == set(first)
    assert all(j.attempt == 1 and j.request_id == "req-1" and j.kind == "webhook" for j in two)
    assert {(await status_of(db, j.id))["worker_id"] for j in two} == {"w:1"}
    assert (await status_of(db, later))["status"] == "queued"
    assert (await status_of(db, cancelled))["status"] == "queued"


async def test_concurrent_claims_never_take_the_same_job(db: Database) -> None:
    ids = set(await insert(db, n=60))

    async def claimer(worker: str) -> list[uuid.UUID]:
        taken: list[uuid.UUID] = []
        async with db.pool.acquire() as conn:
            while batch := await jobs.claim_due(conn, worker, 7):
                taken += [j.id for j in batch]
        return taken

    results = await asyncio.gather(*(claimer(f"w:{i}") for i in range(4)))
    claimed = [job_id for taken in results for job_id in taken]
    assert len(claimed) == len(set(claimed)) == 60 and set(claimed) == ids


async def test_renewal_completion_and_hand_back_in_batches(db: Database) -> None:
    ids = await insert(db, n=4)
    async with db.pool.acquire() as conn:
        leases = {j.id: j.lease for j in await jobs.claim_due(conn, "w:1", 4)}
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", ids[1])
        await conn.execute("UPDATE jobs SET worker_id = 'w:other' WHERE id = $1", ids[2])
        renewed = await jobs.renew_leases(conn, "w:1", [leases[i] for i in ids])
        assert renewed == {ids[0]: False, ids[1]: True, ids[3]: False}  # ids[2]: lost
        completed = await jobs.complete_many(
            conn, "w:1", [(leases[ids[0]], {"n": 0}), (leases[ids[2]], {"n": 2})]
        )
        assert completed == {ids[0]}
        assert await jobs.hand_back(conn, "w:1", [leases[ids[1]], leases[ids[3]]]) == 2
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
        (first,) = await jobs.claim_due(conn, "w:1", 1)
        await conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
        assert await jobs.reclaim_expired(conn) == [(job_id, first.generation + 1)]
        (second,) = await jobs.claim_due(conn, "w:1", 1)
        assert second.id == job_id and second.generation == first.generation + 1
        # every write of the first copy is fenced off
        assert await jobs.renew_leases(conn, "w:1", [first.lease]) == {}
        await jobs.set_progress(conn, first.lease, "w:1", 50)
        assert await jobs.complete_many(conn, "w:1", [(first.lease, {"copy": 1})]) == set()
        await jobs.fail(conn, first.lease, "w:1", "boom")
        await jobs.mark_cancelled(conn, first.lease, "w:1")
        assert not await jobs.schedule_retry(conn, first.lease, "w:1", "TimeoutError", 0)
        assert await jobs.hand_back(conn, "w:1", [first.lease]) == 0
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
        (claimed,) = await jobs.claim_due(conn, "w:1", 1)
        await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
        assert not await jobs.schedule_retry(conn, claimed.lease, "w:1", "TimeoutError", 0.5)
    row = await status_of(db, job_id)
    assert row["status"] == "cancelled" and row["finished_at"] is not None


async def test_a_new_job_notifies_at_commit_and_audit_events_do_not(db: Database, env: Env) -> None:
    marker = "stockroom_test_marker"
    listener = await asyncpg.connect(env.database_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(JOBS_CHANNEL, lambda *args: got.put_nowait(args[2]))
    await listener.add_listener(marker, lambda *args: got.put_nowait(args[2]))

    async def received_up_to_a_marker() -> list[str]:
        """What arrived before a marker sent now (notifications arrive in commit order)."""
        async with db.pool.acquire() as conn:
            await conn.execute(f"NOTIFY {marker}")
        seen = []
        while (channel := await asyncio.wait_for(got.get(), timeout=5)) != marker:
            seen.append(channel)
        return seen

    try:
        async with db.transaction() as conn:
            uow = UnitOfWork(conn, Actor.system())
            await create_job(uow, JobKind.audit, {}, 5)
            await create_job(uow, JobKind.webhook, WEBHOOK, 5)
            await create_job(uow, JobKind.webhook, WEBHOOK, 5)
            assert await received_up_to_a_marker() == []  # not before the commit
        # at the commit: one notification for the transaction's two jobs
        assert await received_up_to_a_marker() == [JOBS_CHANNEL]
        async with db.transaction() as conn:  # an audit event wakes no job drain
            await create_job(UnitOfWork(conn, Actor.system()), JobKind.audit, {}, 5)
        assert await received_up_to_a_marker() == []
    finally:
        await listener.close()


async def generic_plan(conn: Any, sql: str, arguments: str) -> str:
    """EXPLAIN of ``sql`` as the generic plan that a prepared statement settles on after
    five runs (the one that serves most executions)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE plan_under_test AS {sql}")
        explained = await conn.fetch(f"EXPLAIN EXECUTE plan_under_test({arguments})")
        await conn.execute("DEALLOCATE plan_under_test")
    return "\n".join(r[0] for r in explained)


async def test_the_claim_uses_its_partial_index(db: Database) -> None:
    """Under a realistic mix (many finished jobs, a backlog of audit events), the claim reads
    ix_jobs_due, also as the generic plan that a prepared statement ends up with."""
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
        plan = await generic_plan(conn, jobs.CLAIM_DUE, "'w:1', 50")
        indexes = {
            r["indexname"]
            for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")
        }
    assert "Index Scan using ix_jobs_due on jobs" in plan, plan
    assert "Seq Scan" not in plan, plan
    # each one read by a query: the API's lists and queue stats, the audit drain, the claim
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
