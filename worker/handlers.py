"""Job handlers by kind: each calls a service with the job's payload."""

from __future__ import annotations

from typing import Any

from shared.alerts import webhooks
from shared.jobs.kinds import JobKind
from shared.jobs.retry import PermanentJobError
from shared.reports.generate import ReportSettings, generate_report
from worker.jobs import Handler, JobRun


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
    )


async def make_report(run: JobRun) -> dict[str, Any]:
    settings = run.state.settings
    async with run.state.report_slots:
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


HANDLERS: dict[str, Handler] = {
    JobKind.webhook.value: deliver_webhook,
    JobKind.report.value: make_report,
}
