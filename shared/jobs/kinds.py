"""Job kinds: the names shared by the outbox, the queue and the worker's task table."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    audit = "audit"
    report = "report"
    webhook = "webhook"
    import_ = "import"


class JobStatus(StrEnum):
    queued = "queued"
    in_progress = "in_progress"
    complete = "complete"
    failed = "failed"
    cancelled = "cancelled"


FINISHED_STATUSES = frozenset({JobStatus.complete, JobStatus.failed, JobStatus.cancelled})
