"""The API's and the relay's enqueue (``Queue._enqueue_copy``: ARQ's ``enqueue_job`` as one
Lua script) writes what ARQ itself writes, and dedupes as ARQ does."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from shared.jobs.schemas import QueuedJob
from shared.queue import Queue, arq_job_id, audit_drain_job_id, lane_name
from tests.conftest import Env


@dataclass
class Handles:
    queue_name: str  # this test's own
    queue: Queue  # ours
    arq: ArqRedis  # ARQ's own client, reading what ours wrote


@pytest.fixture
async def h(env: Env) -> AsyncIterator[Handles]:
    queue_name = f"{env.queue_name}-enqueue-{uuid.uuid4().hex[:8]}"
    queue = Queue.from_url(env.redis_url, queue_name)
    arq = ArqRedis.from_url(env.redis_url)
    try:
        yield Handles(queue_name, queue, arq)
    finally:  # this test's keys only (never a FLUSHALL of the shared Redis)
        async for key in arq.scan_iter(match=f"*{queue_name}*", count=1000):
            await arq.delete(key)
        await queue.close()
        await arq.aclose()


async def test_arq_reads_a_copy_the_script_enqueued_and_refuses_it_twice(h: Handles) -> None:
    job = QueuedJob(uuid.uuid4(), 2, "webhook")
    assert await h.queue.hand_over([job]) == 1
    assert await h.queue.hand_over([job]) == 0  # the same id: a no-op, as in ARQ
    arq_id = arq_job_id(h.queue_name, job)
    copy = Job(arq_id, h.arq, _queue_name=lane_name(h.queue_name, job.kind))
    assert await copy.status() == JobStatus.queued
    info = await copy.info()
    assert info is not None
    assert (info.function, info.args, info.kwargs) == ("webhook", (str(job.id), 2), {})
    assert info.job_try is None
    # ARQ's own enqueue sees the copy: it adds nothing under that id
    assert await h.arq.enqueue_job("webhook", _job_id=arq_id, _queue_name=h.queue_name) is None
    # kept as long as ARQ keeps a job it enqueued (its expires_extra_ms: a day)
    ttl_ms = await h.arq.pttl(f"arq:job:{arq_id}")
    assert h.arq.expires_extra_ms - 60_000 < ttl_ms <= h.arq.expires_extra_ms


async def test_a_copy_due_later_is_scored_at_its_due_time_and_kept_a_day_after(h: Handles) -> None:
    due = datetime.now(UTC) + timedelta(minutes=10)
    job = QueuedJob(uuid.uuid4(), 0, "webhook", due=due)
    assert await h.queue.hand_over([job]) == 1
    arq_id = arq_job_id(h.queue_name, job)
    score = await h.arq.zscore(lane_name(h.queue_name, job.kind), arq_id)
    assert score == round(due.timestamp() * 1000)
    copy = Job(arq_id, h.arq, _queue_name=lane_name(h.queue_name, job.kind))
    assert await copy.status() == JobStatus.deferred
    assert await h.arq.pttl(f"arq:job:{arq_id}") > h.arq.expires_extra_ms + 9 * 60_000


async def test_audit_wake_ups_queue_one_drain_and_a_follow_up_after_its_delay(h: Handles) -> None:
    drain_ids = {audit_drain_job_id(h.queue_name)}  # the id changes once a minute
    await h.queue.kick_audit_drain()
    await h.queue.kick_audit_drain()
    drain_ids.add(audit_drain_job_id(h.queue_name))
    before = int(time.time() * 1000)
    await h.queue.follow_up_audit_drain(delay_seconds=5)
    queued = [(m.decode(), s) for m, s in await h.arq.zrange(h.queue_name, 0, -1, withscores=True)]
    kicked = [(m, s) for m, s in queued if not h.queue.is_follow_up_drain(m)]
    (follow_up,) = [s for m, s in queued if h.queue.is_follow_up_drain(m)]
    # the second kick added nothing (unless a minute began between the two)
    assert {m for m, _ in kicked} == drain_ids and len(kicked) == len(drain_ids)
    assert all(s <= before for _, s in kicked)
    assert before + 4_900 <= follow_up <= before + 6_000
