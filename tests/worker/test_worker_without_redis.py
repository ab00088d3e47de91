"""A worker started while Redis is unreachable: the process runs (its ARQ side keeps trying
to reach Redis), a job committed meanwhile waits in its record, and once Redis answers the
relay hands it over and it runs once; a SIGTERM stops the process cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

from shared.db.database import Database
from shared.embedded import free_port
from tests.conftest import count
from tests.servers import PrivateRedis
from tests.worker.receiver import Receiver
from tests.worker_support import (
    WorkerFactory,
    create_low_stock_jobs,
    wait_complete,
)


async def test_a_worker_started_without_redis_runs_the_job_once_redis_answers(
    db: Database, receiver: Receiver, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    later = PrivateRedis(free_port())  # nothing listens there yet
    log = tmp_path / "worker.log"
    worker = start_worker(log_to=log, STOCKROOM_REDIS_URL=later.url)
    (job_id,) = await create_low_stock_jobs(db, "NOREDIS-1")
    assert worker.poll() is None, "the worker keeps running without Redis"

    later.start()
    try:
        await wait_complete(db, job_id, 10, "the job once Redis answers")
        assert receiver.count == 1
        assert await count(db, "SELECT attempts FROM jobs WHERE id = $1", job_id) == 1

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
        assert "worker stopped" in log.read_text()
    finally:
        later.stop()
