"""What a worker process holds: settings, the database pool, the queue, an HTTP client, its
identity and counters."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from shared.alerts.webhooks import DeliveryLog
from shared.db.database import Database
from shared.queue import Queue
from shared.settings import Settings


@dataclass(slots=True)
class WorkerContext:
    settings: Settings
    db: Database
    queue: Queue
    http: httpx.AsyncClient
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    jobs_running: int = 0
    jobs_done: int = 0
    # the process's webhook delivery rows, written together (see shared.alerts.webhooks)
    delivery_log: DeliveryLog = field(init=False)

    def __post_init__(self) -> None:
        self.delivery_log = DeliveryLog(self.db)

    @property
    def worker_id(self) -> str:
        return f"{self.host}:{self.pid}"

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "last_heartbeat": datetime.now(UTC).isoformat(),
            "jobs_running": self.jobs_running,
            "jobs_done": self.jobs_done,
        }


def context_of(ctx: dict[str, Any]) -> WorkerContext:
    state: WorkerContext = ctx["stockroom"]
    return state
