"""Durable jobs through real worker processes: delivery, retries, failures, cancel, retry,
and workers that die or are stopped mid-job."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
import signal
import subprocess
from typing import Any

import httpx
from redis.asyncio import Redis

from shared.alerts.webhooks import secret_bytes
from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job
from shared.jobs.schemas import QueuedJob
from shared.queue import JOB_TIMEOUT_SECONDS, Queue, arq_job_id
from tests.conftest import Env, count
from tests.waiting import eventually
from tests.worker.receiver import Receiver
from tests.worker_support import (
    WEBHOOK_SECRET,
    WorkerFactory,
    create_low_stock_jobs,
    make_low_stock_job,
    wait_complete,
)


async def job(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/jobs/{job_id}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def wait_status(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    status: str,
    timeout: float = 30,
) -> dict[str, Any]:
    async def reached() -> bool:
        return (await job(client, headers, job_id))["status"] == status

    await eventually(reached, timeout=timeout, what=f"job {job_id} to be {status}")
    return await job(client, headers, job_id)


async def test_low_stock_webhook_is_signed_and_delivered_once(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
    db: Database,
) -> None:
    job_id = await make_low_stock_job(alerting_client, admin, "LOW-1")
    queued = await job(alerting_client, admin, job_id)
    assert queued["status"] == "queued" and queued["kind"] == "webhook"
    r = await alerting_client.get(f"/api/v1/jobs/{job_id}", headers=admin)
    assert r.headers["retry-after"]
    start_worker()
    done = await wait_status(alerting_client, admin, job_id, "complete")
    assert done["attempts"] == 1 and done["progress"] == 100
    assert (
        "retry-after"
        not in (await alerting_client.get(f"/api/v1/jobs/{job_id}", headers=admin)).headers
    )
    assert receiver.count == 1
    got = receiver.received[0]
    payload = json.loads(got.body)
    assert payload == {
        "type": "stock.low",
        "data": {"sku": "LOW-1", "on_hand": 4, "reorder_point": 5, "location_code": "MAIN"},
    }
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(
        hmac.new(secret_bytes(WEBHOOK_SECRET), signed, hashlib.sha256).digest()
    ).decode()
    assert got.headers["webhook-signature"] == f"v1,{expected}"
    # a further decrease below the reorder point is not a new crossing
    r = await alerting_client.post(
        "/api/v1/inventory/adjustments",
        json={"sku": "LOW-1", "location_code": "MAIN", "delta": -1, "reason": "pick"},
        headers=admin,
    )
    assert r.status_code == 201
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'webhook'") == 1
    assert await count(db, "SELECT count(*) FROM webhook_deliveries WHERE status_code = 200") == 1


async def test_transient_failures_retry_with_backoff_then_complete(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
    db: Database,
) -> None:
    receiver.answer(500, 503)
    job_id = await make_low_stock_job(alerting_client, admin, "FLAKY-1")
    start_worker()
    done = await wait_status(alerting_client, admin, job_id, "complete", timeout=40)
    assert done["attempts"] == 3
    assert receiver.count == 3
    # the same webhook-id on every attempt: receivers dedupe on it
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    async with db.pool.acquire() as conn:
        statuses = [
            r["status_code"]
            for r in await conn.fetch("SELECT status_code FROM webhook_deliveries ORDER BY attempt")
        ]
    assert statuses == [500, 503, 200]


async def test_permanent_failure_fails_at_once_and_retry_makes_a_new_job(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    receiver.answer(400)
    job_id = await make_low_stock_job(alerting_client, admin, "BAD-1")
    start_worker()
    failed = await wait_status(alerting_client, admin, job_id, "failed")
    assert failed["attempts"] == 1
    assert "400" in failed["error"]
    assert receiver.count == 1
    dead = (await alerting_client.get("/api/v1/jobs?status=failed", headers=admin)).json()
    assert [j["id"] for j in dead["items"]] == [job_id]

    r = await alerting_client.post(f"/api/v1/jobs/{job_id}/retry", headers=admin)
    assert r.status_code == 202, r.text
    new = r.json()
    assert new["retry_of"] == job_id and new["id"] != job_id and new["status"] == "queued"
    await wait_status(alerting_client, admin, new["id"], "complete")
    assert receiver.count == 2
    # a finished job cannot be cancelled, a complete one cannot be retried
    assert (
        await alerting_client.post(f"/api/v1/jobs/{new['id']}/cancel", headers=admin)
    ).status_code == 409
    assert (
        await alerting_client.post(f"/api/v1/jobs/{new['id']}/retry", headers=admin)
    ).status_code == 409


async def test_cancelled_queued_job_never_runs(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    job_id = await make_low_stock_job(alerting_client, admin, "CAN-1")
    r = await alerting_client.post(f"/api/v1/jobs/{job_id}/cancel", headers=admin)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    start_worker()
    # A job queued after the cancelled one runs to completion: the worker has had every
    # chance to run the cancelled one, and did not.
    later = await make_low_stock_job(alerting_client, admin, "CAN-2", expect=2)
    await wait_status(alerting_client, admin, later, "complete")
    assert (await job(alerting_client, admin, job_id))["status"] == "cancelled"
    assert receiver.count == 1
    assert json.loads(receiver.received[0].body)["data"]["sku"] == "CAN-2"
    assert (
        await alerting_client.post(f"/api/v1/jobs/{job_id}/cancel", headers=admin)
    ).status_code == 409


async def test_cancel_running_job_stops_it(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    release = receiver.hold_next()
    job_id = await make_low_stock_job(alerting_client, admin, "RUN-1")
    start_worker()
    await eventually(receiver.in_flight, what="the delivery to be in flight")
    assert (await job(alerting_client, admin, job_id))["status"] == "in_progress"
    r = await alerting_client.post(f"/api/v1/jobs/{job_id}/cancel", headers=admin)
    assert r.status_code == 202
    cancelled = await wait_status(alerting_client, admin, job_id, "cancelled", timeout=5)
    assert cancelled["attempts"] == 1
    release.set()
    assert receiver.count == 1


async def test_sigkilled_worker_job_runs_again_within_60s(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
    db: Database,
    env: Env,
) -> None:
    release = receiver.hold_next()
    job_id = await make_low_stock_job(alerting_client, admin, "KILL-1")
    first = start_worker()
    await eventually(receiver.in_flight, what="the delivery to be in flight")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    release.set()
    start_worker()
    done = await wait_status(alerting_client, admin, job_id, "complete", timeout=60)
    # the killed attempt counts; the job completed once, under the next generation's ARQ id
    assert done["attempts"] == 2
    assert await count(db, "SELECT count(*) FROM webhook_deliveries WHERE status_code = 200") == 1
    assert await count(db, "SELECT generation FROM jobs WHERE id = $1", job_id) == 1
    # the killed copy's in-progress key, which ARQ would keep for the job's timeout, is gone
    client = Redis.from_url(env.redis_url)
    try:
        stale = f"{env.queue_name}:{job_id}:0"
        assert not await client.exists(f"arq:in-progress:{stale}", f"arq:job:{stale}")
    finally:
        await client.aclose()


async def test_sigterm_hands_running_job_back_without_burning_an_attempt(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    release = receiver.hold_next()
    job_id = await make_low_stock_job(alerting_client, admin, "TERM-1")
    first = start_worker()  # shutdown grace: 3 s, then running jobs are handed back
    await eventually(receiver.in_flight, what="the delivery to be in flight")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    release.set()
    handed_back = await job(alerting_client, admin, job_id)
    assert handed_back["status"] == "queued" and handed_back["attempts"] == 0
    start_worker()
    done = await wait_status(alerting_client, admin, job_id, "complete")
    assert done["attempts"] == 1


async def test_sigterm_lets_a_short_job_finish(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    release = receiver.hold_next()
    job_id = await make_low_stock_job(alerting_client, admin, "TERM-2")
    worker = start_worker(STOCKROOM_WORKER_SHUTDOWN_GRACE_SECONDS="30")
    await eventually(receiver.in_flight, what="the delivery to be in flight")
    worker.send_signal(signal.SIGTERM)
    release.set()
    assert worker.wait(timeout=30) == 0
    done = await job(alerting_client, admin, job_id)
    assert done["status"] == "complete" and done["attempts"] == 1


async def test_reaper_finishes_a_cancelled_job_of_a_dead_worker(db: Database) -> None:
    from shared.jobs import service as jobs_service

    async with db.pool.acquire() as conn:
        cancelled, lost, spent = await conn.fetchval(
            """
            WITH j AS (
                INSERT INTO jobs (kind, payload, max_attempts, status, attempts, worker_id,
                                  lease_until, cancel_requested)
                VALUES ('webhook', '{}', 5, 'in_progress', 1, 'gone:1', '2000-01-01', true),
                       ('webhook', '{}', 5, 'in_progress', 1, 'gone:1', '2000-01-01', false),
                       ('webhook', '{}', 1, 'in_progress', 1, 'gone:1', '2000-01-01', false)
                RETURNING id)
            SELECT array_agg(id) FROM j
            """
        )
        requeued = await jobs_service.reclaim_expired(conn)
        rows = {
            r["id"]: (r["status"], r["generation"])
            for r in await conn.fetch("SELECT id, status, generation FROM jobs")
        }
    assert rows[cancelled] == ("cancelled", 1)
    assert rows[lost] == ("queued", 1)
    assert rows[spent][0] == "failed"
    assert [(j.id, j.generation, j.kind) for j in requeued] == [(lost, 1, "webhook")]


async def wait_heartbeats(env: Env, *procs: subprocess.Popen[bytes]) -> None:
    """Until each of these worker processes has heartbeated (it is started and draining)."""
    queue = Queue.from_url(env.redis_url, env.queue_name)
    try:

        async def all_up() -> bool:
            pids = {w["pid"] for w in await queue.live_workers()}
            return {p.pid for p in procs} <= pids

        await eventually(all_up, what="the workers' heartbeats")
    finally:
        await queue.close()


async def test_two_workers_drain_a_burst_each_job_once(
    env: Env, db: Database, receiver: Receiver, start_worker: WorkerFactory
) -> None:
    await wait_heartbeats(env, start_worker(), start_worker())
    n = 120
    async with db.transaction() as conn:
        uow = UnitOfWork(conn, Actor.system("burst"))
        for i in range(n):
            data = {"sku": f"B-{i}", "on_hand": 0, "reorder_point": 1, "location_code": "MAIN"}
            await create_job(uow, JobKind.webhook, {"type": "stock.low", "data": data}, 5)

    async def all_complete() -> bool:
        return await count(db, "SELECT count(*) FROM jobs WHERE status = 'complete'") == n

    await eventually(all_complete, timeout=60, what=f"{n} jobs complete")
    assert await count(db, "SELECT count(*) FROM jobs WHERE attempts <> 1") == 0
    assert await count(db, "SELECT count(DISTINCT worker_id) FROM jobs") == 2
    assert receiver.count == n
    assert len({r.headers["webhook-id"] for r in receiver.received}) == n


async def test_a_job_never_handed_to_arq_is_relayed_and_runs_once(
    db: Database, receiver: Receiver, start_worker: WorkerFactory, env: Env
) -> None:
    """A record committed with no hand-over after it (the API process died after the commit,
    say): the relay finds its ARQ copy missing and hands it over."""
    await wait_heartbeats(env, start_worker())
    async with db.pool.acquire() as conn:  # a bare INSERT: nothing hands it to ARQ
        job_id = await conn.fetchval(
            "INSERT INTO jobs (kind, payload, max_attempts) VALUES ('webhook', $1, 5) RETURNING id",
            {"type": "stock.low", "data": {"sku": "LOST-1"}},
        )

    await wait_complete(db, job_id, 10, "the job handed over by the relay")
    assert receiver.count == 1
    assert await count(db, "SELECT attempts FROM jobs WHERE id = $1", job_id) == 1


async def test_a_jobs_arq_copy_is_named_by_its_id_and_generation(
    env: Env, db: Database, alerting_client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """Watching Redis, the job is there under its own name, in ARQ's queue, calling the ARQ
    function of its kind."""
    job_id = await make_low_stock_job(alerting_client, admin, "NAMED-1")
    arq_id = f"{env.queue_name}:{job_id}:0"
    client = Redis.from_url(env.redis_url)
    try:

        async def handed_over() -> bool:
            return bool(await client.exists(f"arq:job:{arq_id}"))

        await eventually(handed_over, what="the job's ARQ copy")
        assert await client.zscore(env.queue_name, arq_id) is not None
        copy = pickle.loads(await client.get(f"arq:job:{arq_id}"))  # noqa: S301 (ours)
        assert (copy["f"], copy["a"]) == ("webhook", (job_id, 0))
    finally:
        await client.aclose()


async def test_a_copy_started_by_a_worker_that_died_before_claiming_is_handed_over_again(
    env: Env, db: Database, receiver: Receiver, start_worker: WorkerFactory
) -> None:
    """ARQ started the copy (its in-progress key, which ARQ keeps for the job's timeout), and
    the worker died before its claim: the record is still queued. The relay sees the copy
    started long ago and hands the job over again."""
    (job_id,) = await create_low_stock_jobs(db, "DIED-1")
    queue = Queue.from_url(env.redis_url, env.queue_name)
    try:
        (copy,) = [QueuedJob(job_id, 0, "webhook")]
        assert await queue.hand_over([copy]) == 1
        arq_id = arq_job_id(env.queue_name, copy)
        started_20s_ago = (JOB_TIMEOUT_SECONDS + 10 - 20) * 1000
        await queue.redis.psetex(f"arq:in-progress:{arq_id}", started_20s_ago, b"1")
        start_worker()
        await wait_complete(db, job_id, 20, "the job handed over again by the relay")
    finally:
        await queue.close()
    assert receiver.count == 1
    assert await count(db, "SELECT attempts FROM jobs WHERE id = $1", job_id) == 1
