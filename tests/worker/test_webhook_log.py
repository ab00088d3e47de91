"""A webhook delivery whose log row cannot be written still stands: ``deliver`` returns, and
the receiver is not sent the event a second time by a retry."""

from __future__ import annotations

import asyncio
import logging
import uuid

import httpx
import pytest

from shared.alerts import webhooks
from shared.db.database import Database
from tests.conftest import count
from tests.worker.receiver import Receiver
from tests.worker_support import WEBHOOK_SECRET, create_low_stock_jobs


async def test_delivery_stands_when_its_log_row_cannot_be_written(
    db: Database, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # No job has this id: the log row violates webhook_deliveries' foreign key to jobs.
    job_id = uuid.uuid4()
    with caplog.at_level(logging.WARNING, logger="stockroom.webhooks"):
        async with httpx.AsyncClient() as client:
            result = await webhooks.deliver(
                db,
                client,
                job_id=job_id,
                attempt=1,
                url=receiver.url,
                secret=WEBHOOK_SECRET,
                event_type="stock.low",
                data={"sku": "LOG-1"},
            )

    assert result == {"status_code": 200, "webhook_id": f"msg_{job_id.hex}"}
    assert receiver.count == 1
    assert await count(db, "SELECT count(*) FROM webhook_deliveries") == 0
    assert "could not record a webhook delivery attempt" in caplog.text


async def test_attempts_recorded_concurrently_are_all_written_and_a_bad_row_loses_no_neighbour(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows recorded at once go in one statement (the worker's delivery log); when one row
    fails (here: no such job), the others are still written and the bad one is logged."""
    job_ids = await create_low_stock_jobs(db, "LOG-A", "LOG-B", "LOG-C")
    missing = uuid.uuid4()
    delivery_log = webhooks.DeliveryLog(db)
    rows = [
        webhooks.DeliveryAttempt(job_id, 1, "http://receiver.test/hook", status, None, 3)
        for job_id, status in [(job_ids[0], 200), (missing, 200), (job_ids[1], 503)]
    ] + [webhooks.DeliveryAttempt(job_ids[2], 2, "http://receiver.test/hook", None, "x", 5)]
    with caplog.at_level(logging.WARNING, logger="stockroom.webhooks"):
        await asyncio.gather(*(delivery_log.record(row) for row in rows))

    written = await db.pool.fetch(
        "SELECT job_id, attempt, status_code, error, duration_ms FROM webhook_deliveries"
    )
    assert sorted((r["job_id"], r["attempt"], r["status_code"], r["error"]) for r in written) == (
        sorted([(job_ids[0], 1, 200, None), (job_ids[1], 1, 503, None), (job_ids[2], 2, None, "x")])
    )
    assert caplog.text.count("could not record a webhook delivery attempt") == 1
    assert str(missing) in "".join(str(getattr(r, "job_id", "")) for r in caplog.records)
