"""Serving the API: uvicorn with the front door's limits (``stockroom api`` runs ``run``).

uvicorn 0.54 has a keep-alive timeout but no deadline for a request's head: a connection that
sends nothing, or a byte of its headers now and then (each byte cancels the keep-alive timer),
is held for ever and counts towards ``limit_concurrency``; enough of them and every request is
refused 503 (slowloris). ``HeadersInTime`` closes a connection whose request head has not
arrived whole within ``API_HEADER_TIMEOUT`` seconds of the connection, or of the head's first
byte for a later request on it (idle time between requests is uvicorn's keep-alive timer's, so
``API_KEEP_ALIVE_TIMEOUT`` keeps its meaning, and a body still arriving after an early answer
is not cut off), as nginx's ``client_header_timeout`` does; ``/metrics`` counts those closed
(``stockroom_http_heads_too_late_total``). The body has its own deadline
(``API_BODY_READ_TIMEOUT``, 408: ``api.mutations``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.metrics import HEADS_TOO_LATE
from shared.settings import Settings, get_settings


class HeadersInTime(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's head (see the module)."""

    header_timeout: float | None = None  # seconds; None: the API_HEADER_TIMEOUT setting

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout = self.header_timeout or get_settings().api_header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()  # the first head: from the connection on

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:  # a later head: from its first byte on (between
            self._await_head()  # requests, idle time is the keep-alive timer's)

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_deadline = self.loop.call_later(self._timeout, self._head_too_late)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            HEADS_TOO_LATE.inc()
            self.transport.close()


def run(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve ``api.app:create_app`` until stopped (SIGTERM: in-flight requests finish)."""
    shared_metrics = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # several processes, one /metrics: they write their series to files in a directory
        # of this run's, which any of them sums up when scraped
        shared_metrics = tempfile.mkdtemp(prefix="stockroom-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_metrics
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http=HeadersInTime,
            log_config=None,
            access_log=False,
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=20,
            limit_concurrency=settings.api_limit_concurrency,
            timeout_keep_alive=settings.api_keep_alive_timeout,
        )
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)
    return 0
