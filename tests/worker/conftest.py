"""The worker-tier fixtures live in ``tests.worker_support`` (loaded for every test)."""

from tests.worker_support import WEBHOOK_SECRET, WorkerFactory, make_low_stock_job

__all__ = ["WEBHOOK_SECRET", "WorkerFactory", "make_low_stock_job"]
