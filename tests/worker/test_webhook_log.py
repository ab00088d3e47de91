"""A webhook delivery whose log row cannot be written still stands: ``deliver`` returns, and
the receiver is not sent the event a second time by a retry."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from shared.alerts import webhooks
from shared.db.database import Database
from tests.conftest import count
from tests.worker.receiver import Receiver
from tests.worker_support import WEBHOOK_SECRET


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
