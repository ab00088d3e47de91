"""The app behind a real uvicorn in the test's own loop, on a free port: what a client sees
over TCP (a dropped connection, a slow one) shows as it would in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from api.server import HeadersInTime
from shared.embedded import free_port
from tests.waiting import eventually, holds


@asynccontextmanager
async def served_by_uvicorn(app: Any, **config: Any) -> AsyncIterator[tuple[str, int]]:
    """``(host, port)`` of a uvicorn serving ``app`` (its lifespan included) until exit, with
    the protocol ``stockroom api`` serves with (``api.server.HeadersInTime``) unless ``http``
    says otherwise."""
    host, port = "127.0.0.1", free_port()
    config.setdefault("http", HeadersInTime)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", **config)
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: holds(server.started), what="uvicorn to start")
    try:
        yield host, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=30)


def restock_head_with_unknown_key(content_length: int) -> bytes:
    """A restock's request head, raw, bearing a well-formed key that does not exist."""
    return (
        "POST /api/v1/inventory/restock HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n"
        "Authorization: Bearer sr_000000000000_unknownsecret\r\n\r\n"
    ).encode()
