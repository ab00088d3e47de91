"""What a worker process holds: settings, the database pool, the queue, its identity."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.db.database import Database
from shared.queue import Queue
from shared.settings import Settings


@dataclass(slots=True)
class WorkerContext:
    settings: Settings
    db: Database
    queue: Queue
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    jobs_running: int = 0
    jobs_done: int = 0


def context_of(ctx: dict[str, Any]) -> WorkerContext:
    state: WorkerContext = ctx["stockroom"]
    return state
