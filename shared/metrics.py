"""Prometheus series shared by the API and the worker (each process exposes its own; the API
run with several uvicorn workers shares one view through ``PROMETHEUS_MULTIPROC_DIR``, see
``stockroom api``). The gauges are set at scrape time from the database, so the most recent
value of any process is the value."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shared.jobs.service import JobRecordStats

HTTP_REQUESTS = Counter(
    "stockroom_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "stockroom_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HEADS_TOO_LATE = Counter(
    "stockroom_http_heads_too_late",
    "Connections closed because a request's head did not arrive within API_HEADER_TIMEOUT",
)
JOBS_ENQUEUED = Counter("stockroom_jobs_enqueued_total", "Jobs written to the outbox", ["kind"])
JOBS_COMPLETED = Counter("stockroom_jobs_completed_total", "Jobs completed", ["kind"])
JOBS_FAILED = Counter("stockroom_jobs_failed_total", "Jobs failed for good", ["kind"])
JOBS_RETRIED = Counter("stockroom_jobs_retried_total", "Job attempts scheduled again", ["kind"])
JOB_DURATION = Histogram(
    "stockroom_job_duration_seconds",
    "Job attempt duration",
    ["kind"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
)
QUEUE_DEPTH = Gauge(
    "stockroom_queue_depth",
    "Jobs waiting, by state",
    ["state"],
    multiprocess_mode="mostrecent",
)
LIVE_WORKERS = Gauge(
    "stockroom_live_workers", "Workers with a fresh heartbeat", multiprocess_mode="mostrecent"
)
OLDEST_QUEUED_AGE = Gauge(
    "stockroom_oldest_queued_age_seconds",
    "Age of the oldest job due and not started",
    multiprocess_mode="mostrecent",
)
DB_GROUP_SIZE = Histogram(
    "stockroom_db_group_size",
    "Calls of one statement sent together, as one transaction, by a GroupCommitter"
    " (group commit; 1: alone)",
    buckets=(1, 2, 4, 8, 12, 16),
)


class RecordsCollector(Collector):
    """The queue's whole picture as one API scrape shows it, from a snapshot: the job records
    by kind and status, the durations of the finished ones (first start to finish), and what
    ARQ holds."""

    def __init__(
        self,
        records: Sequence[JobRecordStats],
        arq: dict[str, int],
        bounds: Sequence[float],
    ) -> None:
        self._records, self._arq, self._bounds = records, arq, bounds

    def collect(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily(
            "stockroom_jobs",
            "Job records by kind and status (the durable records)",
            labels=["kind", "status"],
        )
        duration = HistogramMetricFamily(
            "stockroom_job_record_duration_seconds",
            "Finished jobs (complete or failed), first start to finish, from the durable records",
            labels=["kind", "status"],
        )
        for r in self._records:
            by_status.add_metric([r.kind, r.status], r.count)
            if r.timed:
                buckets = [(str(b), n) for b, n in zip(self._bounds, r.buckets, strict=True)]
                duration.add_metric(
                    [r.kind, r.status], [*buckets, ("+Inf", r.timed)], sum_value=r.seconds
                )
        arq = GaugeMetricFamily(
            "stockroom_arq_jobs", "What ARQ holds for this stack, by state", labels=["state"]
        )
        for state, n in self._arq.items():
            arq.add_metric([state], n)
        yield from (by_status, duration, arq)
