"""Job record bodies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.jobs.kinds import JobStatus


class JobLinks(BaseModel):
    self: str
    cancel: str | None = None
    retry: str | None = None
    retry_of: str | None = None
    report: str | None = None


class Job(BaseModel):
    id: uuid.UUID
    kind: str
    status: JobStatus
    progress: int
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    retry_of: uuid.UUID | None
    request_id: str | None
    links: JobLinks


class QueueStats(BaseModel):
    queued: int
    in_progress: int
    deferred: int
    failed_last_hour: int
    oldest_queued_age_seconds: float
    # what ARQ holds for this stack (every lane), null while Redis is down
    redis_ready: int | None = None
    redis_deferred: int | None = None
    redis_in_progress: int | None = None


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    jobs_running: int
    jobs_done: int


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A queued job as ARQ carries it: its ARQ copy is named by the id and the generation, and
    is due at ``due`` (``None``: now)."""

    id: uuid.UUID
    generation: int
    kind: str
    due: datetime | None = None

    @property
    def lease(self) -> tuple[uuid.UUID, int]:
        """What its ARQ copy claims: the job and this generation."""
        return (self.id, self.generation)
