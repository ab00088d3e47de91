"""Liveness and readiness (open, at the root)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.state import StateDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """200 when PostgreSQL and Redis both answer, else 503."""
    pg_ok, redis_ok = await asyncio.gather(state.db.ping(), state.queue.ping())
    checks = {"postgres": "ok" if pg_ok else "down", "redis": "ok" if redis_ok else "down"}
    ready = pg_ok and redis_ok
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
