"""The unit of work a service runs in: one connection inside one transaction, who is acting,
and the jobs written to the outbox that the caller dispatches once the transaction commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from shared.db.connection import Connection


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused a change: the API key (``None`` for the system) and the request."""

    key_id: uuid.UUID | None
    key_name: str | None
    request_id: str | None

    @classmethod
    def system(cls, request_id: str | None = None) -> Actor:
        return cls(key_id=None, key_name="system", request_id=request_id)


@dataclass(frozen=True, slots=True)
class NewJob:
    id: uuid.UUID
    kind: str


@dataclass(slots=True)
class UnitOfWork:
    conn: Connection
    actor: Actor
    job_max_tries: int = 5
    webhooks_enabled: bool = False
    new_jobs: list[NewJob] = field(default_factory=list)
