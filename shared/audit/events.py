"""Recording audit events: one per accepted mutation, as an ``audit`` job in the outbox.
The worker turns each into exactly one audit entry."""

from __future__ import annotations

import uuid
from typing import Any

from shared.db.unit_of_work import UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job


async def record_event(
    uow: UnitOfWork,
    action: str,
    subject: str,
    skus: list[str],
    payload: dict[str, Any],
) -> uuid.UUID:
    actor = uow.actor
    return await create_job(
        uow,
        JobKind.audit,
        {
            "action": action,
            "subject": subject,
            "skus": skus,
            "payload": payload,
            "actor": {
                "key_id": str(actor.key_id) if actor.key_id else None,
                "name": actor.key_name,
            },
        },
        uow.job_max_tries,
    )
