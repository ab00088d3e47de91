"""The worker's ARQ start of a delivered copy (``shared.queue._Worker.start_jobs``: one script
instead of ARQ's WATCH transaction): it starts a copy that is queued and due, and only when no
worker has marked it in progress; a copy it does not start gives its slot back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.jobs.schemas import QueuedJob
from shared.queue import Queue, TaskSpec, _function, _Worker, arq_job_id, redis_settings
from tests.conftest import Env
from tests.waiting import eventually


async def test_only_a_due_copy_no_worker_holds_is_started_and_slots_come_back(env: Env) -> None:
    ran: list[str] = []

    async def record(_ctx: dict[str, Any], job_id: str, _generation: int) -> None:
        ran.append(job_id)

    queue = Queue.from_url(env.redis_url, env.queue_name)
    due, held, later = (QueuedJob(uuid.uuid4(), 0, "webhook") for _ in range(3))
    later = QueuedJob(later.id, 0, "webhook", due=datetime.now(UTC) + timedelta(hours=1))
    worker = _Worker(
        functions=[_function(TaskSpec("webhook", record, 60))],
        redis_settings=redis_settings(env.redis_url),
        queue_name=env.queue_name,
        handle_signals=False,
        keep_result=0,
        max_jobs=4,
    )
    worker._pool = queue.redis
    try:
        assert await queue.hand_over([due, held, later]) == 3
        held_key = f"arq:in-progress:{arq_job_id(env.queue_name, held)}"
        await queue.redis.set(held_key, b"1", px=60_000)  # another worker started it

        ids = [arq_job_id(env.queue_name, j).encode() for j in (due, held, later)]
        slots = worker.sem._value
        await worker.start_jobs(ids)

        async def started_one_and_slots_back() -> bool:
            return bool(ran) and worker.job_counter == 0 and worker.sem._value == slots

        await eventually(started_one_and_slots_back, what="the due copy run, every slot back")
        assert ran == [str(due.id)]
        assert list(worker.tasks) == [arq_job_id(env.queue_name, due)]
        assert await queue.redis.exists(held_key) == 1  # the other worker's mark untouched
        assert await queue.redis.exists(f"arq:in-progress:{arq_job_id(env.queue_name, later)}") == 0
    finally:
        await queue.forget([due, held, later])
        await queue.close()
