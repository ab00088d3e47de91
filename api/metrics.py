"""``/metrics`` and the request metrics middleware (plain ASGI)."""

from __future__ import annotations

import logging
import os
import re
import time

from fastapi import APIRouter, FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.state import StateDep
from shared import metrics
from shared.jobs import service as jobs
from shared.logs import ACCESS_LOG, request_id_var

router = APIRouter(tags=["ops"])
log = logging.getLogger("stockroom.api")


@router.get("/metrics", include_in_schema=False)
async def prometheus(state: StateDep) -> Response:
    """Prometheus text format. Queue gauges are read from the job records at scrape time."""
    try:
        # straight from the pool, like the readiness probe: a scrape must not queue behind
        # every request in flight
        async with state.db.pool.acquire(timeout=2) as conn:
            stats = await jobs.queue_stats(conn)
        metrics.QUEUE_DEPTH.labels("queued").set(stats.queued)
        metrics.QUEUE_DEPTH.labels("in_progress").set(stats.in_progress)
        metrics.QUEUE_DEPTH.labels("deferred").set(stats.deferred)
        metrics.OLDEST_QUEUED_AGE.set(stats.oldest_queued_age_seconds)
    except Exception as exc:  # a scrape must not fail because the database is away
        log.warning("metrics: queue stats unavailable: %s", exc)
    try:
        metrics.LIVE_WORKERS.set(len(await state.queue.live_workers()))
    except Exception as exc:
        log.warning("metrics: worker list unavailable: %s", exc)
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


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
            metrics.HTTP_REQUESTS.labels(method, label, str(status)).inc()
            metrics.HTTP_LATENCY.labels(method, label).observe(elapsed)
            ACCESS_LOG.write(
                method,
                scope["path"],
                status,
                label,
                round(elapsed * 1000, 2),
                request_id_var.get(),
            )
