"""Recording audit events: one per accepted mutation, as an ``audit`` job in the outbox.
The worker turns each into exactly one audit entry."""

from __future__ import annotations

import uuid
from typing import Any

from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job, job_insert

# The audit job's row for a data-modifying CTE: a hot path writes its event in the statement
# that makes the change (``payload``, ``source`` and the rest are SQL expressions of that
# statement, filled in with ``str.format``). The one job INSERT, ``shared.jobs.outbox``'s.
AUDIT_JOB_INSERT = job_insert(
    {
        "kind": "'audit'",
        **{f: f"{{{f}}}" for f in ("payload", "max_attempts", "request_id", "actor_key_id")},
    },
    source="{source}",
)


def event_payload(
    actor: Actor, action: str, subject: str, skus: list[str], payload: dict[str, Any]
) -> dict[str, Any]:
    """The audit job's payload; ``shared.audit.service`` reads these fields back."""
    return {
        "action": action,
        "subject": subject,
        "skus": skus,
        "payload": payload,
        "actor": {"key_id": str(actor.key_id) if actor.key_id else None, "name": actor.key_name},
    }


def event_payload_sql(
    action: str, subject: str, skus: str, payload: str, key_id: str, key_name: str
) -> str:
    """``event_payload`` as a SQL expression, for a statement that records its own event
    (``AUDIT_JOB_INSERT``): the arguments are SQL expressions (``action`` a literal)."""
    return f"""jsonb_build_object(
        'action', '{action}', 'subject', {subject}, 'skus', {skus}, 'payload', {payload},
        'actor', jsonb_build_object('key_id', {key_id}::text, 'name', {key_name}))"""


async def record_event(
    uow: UnitOfWork,
    action: str,
    subject: str,
    skus: list[str],
    payload: dict[str, Any],
) -> uuid.UUID:
    return await create_job(
        uow,
        JobKind.audit,
        event_payload(uow.actor, action, subject, skus, payload),
        uow.job_max_tries,
    )
