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

# Kinds that run on an ARQ queue of their own, served by every worker process with few slots
# (``shared.queue.lane_name``, ``worker.main``): long jobs that must never take every slot
# from the short ones. Any other kind shares the main queue's slots.
KINDS_WITH_OWN_LANE = frozenset({JobKind.report})
