"""Ops views (admin): the queue and the live workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from api.auth import ConnDep, requires
from api.state import StateDep
from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.jobs import service
from shared.jobs.schemas import QueueStats, WorkerInfo

router = APIRouter(prefix="/ops", tags=["ops"])

Admin = Annotated[Principal, requires(Scope.admin)]


@router.get("/queue", response_model=QueueStats)
async def queue(conn: ConnDep, state: StateDep, _: Admin) -> QueueStats:
    """Job counts from the durable records; `redis_*` show what ARQ holds for this stack,
    every lane together: ready, deferred, in progress (null while Redis is down)."""
    stats = await service.queue_stats(conn)
    try:
        stats.redis_ready, stats.redis_deferred = await state.queue.depth()
        stats.redis_in_progress = await state.queue.in_progress_count()
    except Exception:
        stats.redis_ready = stats.redis_deferred = stats.redis_in_progress = None
    return stats


@router.get("/workers", response_model=list[WorkerInfo])
async def workers(state: StateDep, _: Admin) -> list[WorkerInfo]:
    """Workers whose heartbeat (every 5 s, expiring after 20 s) is live."""
    found = [WorkerInfo.model_validate(w) for w in await state.queue.live_workers()]
    return sorted(found, key=lambda w: (w.host, w.pid))
