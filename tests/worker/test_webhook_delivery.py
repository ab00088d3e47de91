"""A webhook delivery takes a connection only to record its attempt: a slow receiver holds
no pooled connection while it makes the worker wait."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from shared.alerts import webhooks
from shared.db.database import Database
from tests.conftest import Env, count
from tests.waiting import eventually
from tests.worker.receiver import Receiver


async def test_a_slow_receiver_holds_no_connection(
    env: Env, db: Database, receiver: Receiver
) -> None:
    job_id = await _job(db)
    release = receiver.hold_next()
    small = await Database.connect(env.database_url, pool_size=1)
    try:
        async with httpx.AsyncClient() as http:
            delivery = asyncio.create_task(
                webhooks.deliver(
                    small,
                    http,
                    job_id=job_id,
                    attempt=1,
                    url=receiver.url,
                    secret="whsec_test",
                    event_type="stock.low",
                    data={"sku": "SLOW-HOOK"},
                )
            )
            await eventually(receiver.in_flight, what="the receiver to hold the delivery")
            async with small.acquire(timeout=5) as conn:  # the pool's only connection
                assert await conn.fetchval("SELECT 1") == 1
            release.set()
            result = await asyncio.wait_for(delivery, timeout=20)
    finally:
        await small.close()
    assert result["status_code"] == 200, result
    assert await count(db, "SELECT count(*) FROM webhook_deliveries WHERE job_id = $1", job_id) == 1


async def _job(db: Database) -> uuid.UUID:
    async with db.pool.acquire() as conn:
        job_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO jobs (kind, payload, max_attempts)"
            " VALUES ('webhook', '{}', 5) RETURNING id"
        )
    return job_id
