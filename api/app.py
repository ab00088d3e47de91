"""The application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import console, openapi, problems
from api.metrics import MetricsMiddleware
from api.metrics import router as metrics_router
from api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from api.ratelimit import RateLimiter, RateLimitMiddleware
from api.routers import audit, catalog, health, imports, inventory, jobs, ops, reports
from api.state import AppState
from api.text_guard import TextGuard
from shared.db.database import Database
from shared.logs import ACCESS_LOG
from shared.queue import Queue
from shared.settings import Settings, get_settings
from shared.urls import API_PREFIX

# The API's connections: no statement of a request runs longer than this, and a transaction
# left open (a bug, a stuck task) does not hold its locks for ever. Named in pg_stat_activity.
API_SESSION = {
    "application_name": "stockroom-api",
    "statement_timeout": "30s",
    "idle_in_transaction_session_timeout": "60s",
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    database_url = settings.require_database_url()
    redis_url = settings.require_redis_url()
    limiter = None
    if settings.rate_limit_requests:
        limiter = RateLimiter.from_url(
            redis_url,
            settings.queue_name,
            settings.rate_limit_requests,
            settings.rate_limit_window_seconds,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await Database.connect(
            database_url,
            pool_size=settings.db_pool_size,
            session=API_SESSION,
            parking=True,
            connect_timeout=settings.db_connect_timeout,
            command_timeout=settings.db_command_timeout,
            checkout_timeout=settings.db_checkout_timeout,
        )
        queue = Queue.from_url(redis_url, settings.queue_name)
        state = app.state.stockroom = AppState(settings=settings, db=db, queue=queue)
        app.state.rate_limiter = limiter
        if limiter is not None:
            limiter.start()
        # What start-up built lives as long as the process: keep it out of the collector's
        # full passes (one over the start-up heap paused the loop ~50 ms under load).
        gc.freeze()
        try:
            yield
        finally:
            ACCESS_LOG.flush()
            if limiter is not None:
                await limiter.close()
            await state.close()

    docs = settings.docs_on
    app = FastAPI(
        title="Stockroom",
        version="1.0.0",
        summary="Warehouse inventory: catalog, stock ledger, jobs, audit and reports.",
        lifespan=lifespan,
        # no OpenTelemetry here (Prometheus metrics, JSON logs): not even its per-request check
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url="/api/docs" if docs else None,
        redoc_url="/api/redoc" if docs else None,
        openapi_url="/api/openapi.json" if docs else None,
    )
    problems.install(app)
    openapi.install(app)

    # Routes are matched in order: the hot ones first, the restock ahead of every router.
    inventory.add_restock_route(app.router, API_PREFIX)
    app.include_router(health.router)
    app.include_router(inventory.router, prefix=API_PREFIX)
    app.include_router(catalog.router, prefix=API_PREFIX)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(audit.router, prefix=API_PREFIX)
    app.include_router(ops.router, prefix=API_PREFIX)
    app.include_router(reports.router, prefix=API_PREFIX)
    app.include_router(imports.router, prefix=API_PREFIX)
    app.include_router(metrics_router)
    console.install(app)

    _install_middleware(app, settings, limiter)
    return app


def _install_middleware(app: FastAPI, settings: Settings, limiter: RateLimiter | None) -> None:
    """The plain ASGI middleware every route is wrapped in, innermost first."""
    _allow_origins(app, settings)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        larger={API_PREFIX + imports.IMPORTS_PATH: settings.import_max_bytes},
    )
    # Text PostgreSQL cannot store, refused for every route (api.text_guard).
    app.add_middleware(TextGuard)
    if limiter is not None:
        app.add_middleware(RateLimitMiddleware, limiter=limiter)
    # Outermost last: the request id wraps the metrics and access log, which log with it.
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)


def _allow_origins(app: FastAPI, settings: Settings) -> None:
    """CORS for the configured origins (none: no CORS middleware at all)."""
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "Retry-After",
                "X-Request-ID",
                "Idempotent-Replayed",
                "RateLimit",
                "RateLimit-Policy",
            ],
        )
