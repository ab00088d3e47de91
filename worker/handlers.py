"""Job handlers by kind: each calls a service with the job's payload."""

from __future__ import annotations

import logging
from typing import Any

from shared.alerts import webhooks
from shared.imports.runner import ImportJob
from shared.imports.runner import run_import as apply_import
from shared.jobs.kinds import JobKind
from shared.jobs.retry import PermanentJobError
from shared.reports.generate import ReportSettings, generate_report
from worker.jobs import Handler, JobRun

log = logging.getLogger("stockroom.worker")


async def deliver_webhook(run: JobRun) -> dict[str, Any]:
    settings = run.state.settings
    if not settings.webhook_url or not settings.webhook_secret:
        raise PermanentJobError("STOCKROOM_WEBHOOK_URL is not set on this worker")
    return await webhooks.deliver(
        run.state.db,
        run.state.http,
        job_id=run.job.id,
        attempt=run.job.attempt,
        url=settings.webhook_url.get_secret_value(),
        secret=settings.webhook_secret.get_secret_value(),
        event_type=run.job.payload["type"],
        data=run.job.payload["data"],
        delivery_log=run.state.delivery_log,
    )


async def make_report(run: JobRun) -> dict[str, Any]:
    # at most report_slots_for per worker: reports have an ARQ lane of their own (worker.main)
    settings = run.state.settings
    return await generate_report(
        run.state.db.pool,
        run.job.id,
        run.job.payload,
        worker_id=run.state.worker_id,
        generation=run.job.generation,
        settings=ReportSettings(
            max_bytes=settings.report_max_bytes,
            retention_hours=settings.report_retention_hours,
        ),
        progress=run.progress,
    )


async def run_import(run: JobRun) -> dict[str, Any]:
    """A bulk import (``shared.imports.runner``): its effects are fenced by the job's
    generation, so a second run applies nothing twice."""
    job = ImportJob.from_payload(
        run.job.id,
        run.job.generation,
        run.job.payload,
        run.job.request_id,
        run.state.settings.job_max_tries,
    )
    outcome = await apply_import(run.state.db, job, run.progress)
    try:
        await run.state.queue.dispatch(outcome.new_jobs)
    except Exception as exc:  # the relay cron wakes the audit drain later
        log.warning("could not wake the audit drain after an import: %s", exc)
    return outcome.result


HANDLERS: dict[str, Handler] = {
    JobKind.webhook.value: deliver_webhook,
    JobKind.report.value: make_report,
    JobKind.import_.value: run_import,
}
