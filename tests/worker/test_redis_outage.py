"""Redis down at the moment requests commit, or flushed with jobs queued: every mutation is
accepted, readiness says so, and once Redis answers the relay hands over what Redis does not
hold: every audit entry lands exactly once, every job runs once. Uses a private
redis-server."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

from api.app import create_app
from shared.db.database import Database
from shared.jobs.schemas import QueuedJob
from shared.queue import Queue
from tests.conftest import Env, count
from tests.servers import PrivateRedis
from tests.waiting import eventually
from tests.worker.receiver import Receiver
from tests.worker_support import WorkerFactory, create_low_stock_jobs, wait_complete


async def test_mutations_during_a_redis_outage_are_audited_exactly_once(
    env: Env,
    db: Database,
    admin: dict[str, str],
    private_redis: PrivateRedis,
    start_worker: WorkerFactory,
) -> None:
    outage_env = Env(env.database_url, private_redis.url, env.queue_name + "-outage")
    app = create_app(outage_env.settings())
    worker = start_worker(
        STOCKROOM_REDIS_URL=private_redis.url, STOCKROOM_QUEUE_NAME=outage_env.queue_name
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post(
                "/api/v1/catalog/products",
                json={"sku": "OUT-1", "title": "t", "unit_price": 1},
                headers=admin,
            )
            assert r.status_code == 201

            private_redis.stop()
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"postgres": "ok", "redis": "down"}
            n = 25
            for i in range(n):
                r = await client.post(
                    "/api/v1/inventory/restock",
                    json={"sku": "OUT-1", "quantity": 1, "reference": f"r{i}"},
                    headers={**admin, "Idempotency-Key": f"outage-{i}"},
                )
                assert r.status_code == 201, r.text
            assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'audit'") == n + 1

            private_redis.start()
            assert (await client.get("/readyz")).status_code == 200

            async def all_audited() -> bool:
                return await count(db, "SELECT count(*) FROM audit_entries") == n + 1

            await eventually(all_audited, timeout=60, what="every audit entry after the outage")
    assert worker.poll() is None, "the worker survives a Redis outage"
    assert await count(db, "SELECT count(DISTINCT event_id) FROM audit_entries") == n + 1
    assert (
        await count(db, "SELECT count(*) FROM jobs WHERE kind = 'audit' AND status = 'complete'")
        == n + 1
    )


async def test_a_job_committed_while_redis_is_down_runs_within_5s_of_redis_answering(
    env: Env,
    db: Database,
    private_redis: PrivateRedis,
    receiver: Receiver,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(
        log_to=log,
        STOCKROOM_REDIS_URL=private_redis.url,
        STOCKROOM_QUEUE_NAME=env.queue_name + "-outage",
    )
    client = redis.Redis(port=private_redis.port)

    async def heartbeat() -> bool:
        return bool(client.keys("stockroom:*:worker:*"))

    await eventually(heartbeat, what="the worker's heartbeat")
    private_redis.stop()
    (job_id,) = await create_low_stock_jobs(db, "OUT-2")  # its hand-over cannot happen

    private_redis.start()
    try:
        await wait_complete(db, job_id, 5, "the job within 5 s of Redis answering")
    except AssertionError as exc:  # say what the job and the worker were doing
        async with db.pool.acquire() as conn:
            job = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        tail = "\n".join(log.read_text().splitlines()[-40:])
        detail = f"job: {dict(job) if job else None}\nworker log:\n{tail}"
        raise AssertionError(f"{exc}\n{detail}") from exc
    assert receiver.count == 1
    assert await count(db, "SELECT attempts FROM jobs WHERE id = $1", job_id) == 1
    assert worker.poll() is None, "the worker survives a Redis outage"


async def test_a_flushall_with_500_jobs_queued_loses_none_and_runs_each_once(
    env: Env,
    db: Database,
    private_redis: PrivateRedis,
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    n = 500
    queue_name = env.queue_name + "-flush"
    ids = await create_low_stock_jobs(db, *(f"FLUSH-{i}" for i in range(n)))
    queue = Queue.from_url(private_redis.url, queue_name)
    try:
        assert await queue.hand_over([QueuedJob(job_id, 0, "webhook") for job_id in ids]) == n
        assert await queue.depth() == (n, 0)
        await queue.redis.flushall()  # a private server: nothing else lives there
        assert await queue.depth() == (0, 0)
    finally:
        await queue.close()
    start_worker(STOCKROOM_REDIS_URL=private_redis.url, STOCKROOM_QUEUE_NAME=queue_name)

    async def all_complete() -> bool:
        sql = "SELECT count(*) FROM jobs WHERE status = 'complete' AND attempts = 1"
        return await count(db, sql) == n

    await eventually(all_complete, timeout=60, what=f"{n} jobs complete after the FLUSHALL")
    assert receiver.count == n
    assert len({r.headers["webhook-id"] for r in receiver.received}) == n
