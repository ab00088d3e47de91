"""Waiting on a condition, bounded: the only form of waiting the tests use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def holds(value: bool) -> bool:
    """``value`` as a condition for ``eventually``: ``eventually(lambda: holds(x == y))``."""
    return value


async def answers(client: httpx.AsyncClient, path: str = "/healthz") -> bool:
    """Whether a server (a child process starting up) answers ``path`` with 200 yet, as a
    condition for ``eventually``."""
    try:
        return (await client.get(path)).status_code == 200
    except httpx.TransportError:
        return False
