"""A worker started while Redis is unreachable: durable jobs do not depend on Redis, so the
process's job drain runs from the start, while its ARQ side keeps trying to reach Redis; a
SIGTERM still stops the process cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

from shared.db.database import Database
from shared.embedded import free_port
from tests.conftest import count
from tests.worker.receiver import Receiver
from tests.worker_support import WorkerFactory, create_low_stock_jobs, wait_complete


async def test_durable_job_completes_in_a_worker_started_without_redis(
    db: Database, receiver: Receiver, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    log = tmp_path / "worker.log"
    worker = start_worker(log_to=log, STOCKROOM_REDIS_URL=nowhere)
    (job_id,) = await create_low_stock_jobs(db, "NOREDIS-1")

    await wait_complete(db, job_id, 20, "the job to complete in a worker without Redis")
    assert receiver.count == 1
    assert await count(db, "SELECT attempts FROM jobs WHERE id = $1", job_id) == 1
    assert worker.poll() is None, "the worker keeps running without Redis"

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, log.read_text()
    assert "worker stopped" in log.read_text()
