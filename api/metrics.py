"""``/metrics`` and the request metrics middleware (plain ASGI)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.state import AppState, StateDep
from shared import metrics
from shared.jobs import service as jobs
from shared.jobs.service import DURATION_BUCKETS
from shared.logs import ACCESS_LOG, request_id_var
from shared.metrics import RecordsCollector

router = APIRouter(tags=["ops"])
log = logging.getLogger("stockroom.api")


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request, state: StateDep) -> Response:
    """Prometheus text format: this process's series, and the whole queue's picture from the
    durable job records and from ARQ (``MetricsSnapshot``)."""
    snapshot: MetricsSnapshot | None = getattr(request.app.state, "metrics_snapshot", None)
    if snapshot is None:
        snapshot = request.app.state.metrics_snapshot = MetricsSnapshot()
    return Response(await snapshot.body(state), media_type=CONTENT_TYPE_LATEST)


class MetricsSnapshot:
    """The ``/metrics`` body, taken at most once a second and shared by every scrape meanwhile;
    one take at a time, so that scrapes use at most one database connection, straight from
    the pool's headroom (a scrape never queues behind requests, and never takes the readiness
    probe's connection: the headroom is two)."""

    EVERY_SECONDS = 1.0

    def __init__(self) -> None:
        self._body = b""
        self._taken_at = float("-inf")
        self._taking: asyncio.Task[None] | None = None

    async def body(self, state: AppState) -> bytes:
        if self._taking is None and time.monotonic() - self._taken_at >= self.EVERY_SECONDS:
            self._taking = asyncio.create_task(self._take(state))
        if self._taking is not None:
            await asyncio.shield(self._taking)
        return self._body

    async def _take(self, state: AppState) -> None:
        try:
            records = RecordsCollector(
                await _job_records(state), await _arq_holds(state), DURATION_BUCKETS
            )
            try:
                metrics.LIVE_WORKERS.set(len(await state.queue.live_workers()))
            except Exception as exc:
                log.warning("metrics: worker list unavailable: %s", exc)
            snapshot = CollectorRegistry()
            snapshot.register(records)
            self._body = generate_latest(_registry()) + generate_latest(snapshot)
            self._taken_at = time.monotonic()
        finally:
            self._taking = None


async def _job_records(state: AppState) -> list[jobs.JobRecordStats]:
    """The records' counts, and the queue gauges set from them (empty when the database is
    away: a scrape must not fail)."""
    try:
        async with state.db.pool.acquire(timeout=2) as conn:
            stats = await jobs.queue_stats(conn)
            records = await jobs.job_record_stats(conn)
    except Exception as exc:
        log.warning("metrics: job records unavailable: %s", exc)
        return []
    metrics.QUEUE_DEPTH.labels("queued").set(stats.queued)
    metrics.QUEUE_DEPTH.labels("in_progress").set(stats.in_progress)
    metrics.QUEUE_DEPTH.labels("deferred").set(stats.deferred)
    metrics.OLDEST_QUEUED_AGE.set(stats.oldest_queued_age_seconds)
    return records


async def _arq_holds(state: AppState) -> dict[str, int]:
    """What ARQ holds for this stack (nothing while Redis is down)."""
    try:
        ready, deferred = await state.queue.depth()
        return {
            "ready": ready,
            "deferred": deferred,
            "in_progress": await state.queue.in_progress_count(),
        }
    except Exception as exc:
        log.warning("metrics: ARQ queue unavailable: %s", exc)
        return {}


def _registry() -> CollectorRegistry:
    """This process's series, or, under ``stockroom api --workers N``, every worker's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class MetricsMiddleware:
    """Counts and times requests by route template (not raw path: bounded label sets), and
    writes the access log line (``shared.logs.AccessLog``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: list[tuple[re.Pattern[str], str]] | None = None
        # a request's series, by method, route and status: ``labels()`` checks and locks on
        # every call (as many entries as the series themselves)
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _count(self, method: str, label: str, status: int, elapsed: float) -> None:
        series = self._series.get((method, label, status))
        if series is None:
            series = self._series[(method, label, status)] = (
                metrics.HTTP_REQUESTS.labels(method, label, str(status)),
                metrics.HTTP_LATENCY.labels(method, label),
            )
        series[0].inc()
        series[1].observe(elapsed)

    def _template(self, scope: Scope) -> str:
        if self._templates is None:
            fastapi_app = scope.get("app")
            paths = fastapi_app.openapi()["paths"] if isinstance(fastapi_app, FastAPI) else {}
            self._templates = [(compile_path(path)[0], path) for path in paths]
            self._templates += [(compile_path(p)[0], p) for p in ("/metrics",)]
        path = scope["path"]
        for regex, template in self._templates:
            if regex.match(path):
                return template
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = self._template(scope)
            method = scope["method"]
            elapsed = time.perf_counter() - started
            self._count(method, label, status, elapsed)
            ACCESS_LOG.write(
                method,
                scope["path"],
                status,
                label,
                round(elapsed * 1000, 2),
                request_id_var.get(),
            )
