"""The worker tier end to end: mutations write audit events to the outbox; a real worker
turns each into exactly one audit entry."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from shared.audit import service as audit
from shared.db.database import Database
from shared.db.unit_of_work import NewJob
from shared.queue import Queue
from tests.conftest import Env, count
from tests.waiting import eventually
from worker.main import build_runner

PRODUCTS = "/api/v1/catalog/products"


@pytest.fixture
def worker_process(env: Env) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "worker"],
        env=env.process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


async def test_real_worker_writes_one_entry_per_mutation(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    db: Database,
    worker_process: subprocess.Popen[bytes],
) -> None:
    for i in range(5):
        r = await client.post(
            PRODUCTS, json={"sku": f"AUD-{i}", "title": "t", "unit_price": 1}, headers=admin
        )
        assert r.status_code == 201
    await client.patch(f"{PRODUCTS}/AUD-0", json={"title": "changed"}, headers=admin)
    await client.delete(f"{PRODUCTS}/AUD-1", headers=admin)

    async def all_written() -> bool:
        return await count(db, "SELECT count(*) FROM audit_entries") >= 7

    await eventually(all_written, timeout=30, what="7 audit entries")
    assert await count(db, "SELECT count(*) FROM audit_entries") == 7
    assert await count(db, "SELECT count(*) FROM jobs WHERE status = 'complete'") == 7
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT action, actor_name, subject, skus, payload FROM audit_entries"
            " WHERE action = 'product.updated'"
        )
    assert row["actor_name"] == "admin" and row["subject"] == "product:AUD-0"
    assert row["skus"] == ["AUD-0"] and row["payload"]["changes"] == {"title": "changed"}

    worker_process.send_signal(signal.SIGTERM)
    assert worker_process.wait(timeout=30) == 0


async def test_burst_worker_drains_and_reruns_are_no_ops(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database, env: Env
) -> None:
    for i in range(3):
        await client.post(
            PRODUCTS, json={"sku": f"BUR-{i}", "title": "t", "unit_price": 1}, headers=admin
        )
    runner = build_runner(env.settings(), burst=True, handle_signals=False)
    await runner.run_async()
    await runner.close()
    assert await count(db, "SELECT count(*) FROM audit_entries") == 3

    # Re-delivery: the same events offered again (status reset as if a worker died after
    # writing) write nothing new.
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET status = 'queued'")
        assert await audit.drain_batch(conn, 100) == 3
    assert await count(db, "SELECT count(*) FROM audit_entries") == 3

    queue = Queue.from_url(env.redis_url, env.queue_name)
    try:
        await queue.kick_audit_drain()
        await queue.kick_audit_drain()  # coalesced: one drain job queued
        ready, _ = await queue.depth()
        assert ready == 1
    finally:
        await queue.close()


class CountingQueue(Queue):
    """The real queue, recording when each audit wake-up went to Redis."""

    kicks: list[float]

    async def kick_audit_drain(self) -> None:
        await super().kick_audit_drain()
        self.kicks.append(time.monotonic())


async def test_audit_wake_ups_lead_then_trail_at_most_one_per_interval(env: Env) -> None:
    queue = CountingQueue.from_url(env.redis_url, env.queue_name)
    queue.kicks = []
    interval = queue.AUDIT_KICK_INTERVAL_SECONDS = 0.5
    event = [NewJob(id=uuid.uuid4(), kind="audit")]

    async def kicked(n: int) -> bool:
        return len(queue.kicks) == n and not queue._background  # and none scheduled

    try:
        # an isolated event: kicked at once, not after the interval
        sent = time.monotonic()
        await queue.dispatch(event)
        await eventually(lambda: kicked(1), timeout=interval / 2, what="the leading kick")
        assert queue.kicks[0] - sent < interval / 2

        # a burst within the interval: one trailing kick, at its end
        for _ in range(200):
            await queue.dispatch(event)
        await eventually(lambda: kicked(2), what="one trailing kick")
        assert queue.kicks[1] - queue.kicks[0] >= interval * 0.95

        # an event just after the trailing kick gets its own, an interval later
        await queue.dispatch(event)
        await eventually(lambda: kicked(3), what="a kick for the later event")
        assert queue.kicks[2] - queue.kicks[1] >= interval * 0.95
        ready, _ = await queue.depth()
        assert ready == 1  # the wake-ups coalesce into one drain job
    finally:
        await queue.close()
