"""The request head's deadline (``api.server.HeadersInTime``), behind a real uvicorn: a
connection that sends no head, or trickles one, is closed once its time is up, although each
byte would have restarted uvicorn's keep-alive timer; a head that arrived in time is not cut
off however long its body or its answer takes; keep-alive requests in time are answered."""

from __future__ import annotations

import asyncio
import time

from api.app import create_app
from api.server import HeadersInTime
from tests.api.serving import restock_head_with_unknown_key, served_by_uvicorn
from tests.conftest import Env
from tests.inventory.helpers import RESTOCK

HEAD_TIMEOUT = 1.0


class QuickHeads(HeadersInTime):
    header_timeout = HEAD_TIMEOUT


async def _closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from ``started`` until the server closed the connection (it sends nothing)."""
    assert await asyncio.wait_for(reader.read(4096), timeout=30) == b""
    return time.monotonic() - started


async def test_a_connection_that_sends_no_head_is_closed_once_its_time_is_up(env: Env) -> None:
    async with served_by_uvicorn(create_app(env.settings()), http=QuickHeads) as (host, port):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            waited = await _closed_after(reader, started)
        finally:
            writer.close()
    assert HEAD_TIMEOUT * 0.9 <= waited < HEAD_TIMEOUT + 2


async def test_a_trickled_head_is_closed_although_bytes_keep_coming(env: Env) -> None:
    async with served_by_uvicorn(create_app(env.settings()), http=QuickHeads) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        closing = asyncio.create_task(_closed_after(reader, started))
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
                if closing.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.wait([closing], timeout=0.1)
            waited = await closing
        finally:
            writer.close()
    assert waited < HEAD_TIMEOUT + 2


async def test_the_next_head_on_a_kept_alive_connection_has_its_own_deadline(env: Env) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with served_by_uvicorn(create_app(env.settings()), http=QuickHeads) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(3):  # heads in time: each answered on the same connection
                writer.write(request)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(4096), timeout=10)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                await asyncio.sleep(HEAD_TIMEOUT / 2)
            started = time.monotonic()
            writer.write(request[:10])  # then a head that stops half-way
            await writer.drain()
            waited = await _closed_after(reader, started)
        finally:
            writer.close()
    assert waited < HEAD_TIMEOUT + 2


async def test_a_head_in_time_is_not_cut_off_while_its_body_is_late(
    env: Env, admin: dict[str, str]
) -> None:
    """The body's own deadline (a 408, three times the head's) applies, not the head's."""
    app = create_app(env.settings(api_body_read_timeout=3 * HEAD_TIMEOUT))
    async with served_by_uvicorn(app, http=QuickHeads) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"POST {RESTOCK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\nAuthorization: {admin['Authorization']}\r\n\r\n{{".encode()
            )
            await writer.drain()
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(4096), timeout=30)
            waited = time.monotonic() - started
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert waited >= 3 * HEAD_TIMEOUT * 0.9


async def test_an_idle_kept_alive_connection_lives_as_long_as_keep_alive_says(env: Env) -> None:
    """Between requests the keep-alive timer rules, even when it is longer than the head's."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    app = create_app(env.settings())
    async with served_by_uvicorn(app, http=QuickHeads, timeout_keep_alive=30) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(2):
                writer.write(request)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(4096), timeout=10)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                await asyncio.sleep(2 * HEAD_TIMEOUT)  # idle, longer than a head may take
        finally:
            writer.close()


async def test_a_body_still_arriving_after_an_early_answer_is_not_cut_off(env: Env) -> None:
    """An unknown key is answered 401 before the body is read; the client, still sending its
    body for longer than a head may take, finishes it and reads the 401."""
    async with served_by_uvicorn(create_app(env.settings()), http=QuickHeads) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(restock_head_with_unknown_key(20000))
            for _ in range(20):  # 2.0 s of body
                writer.write(b" " * 1000)
                await writer.drain()
                await asyncio.sleep(0.1)
            answer = await asyncio.wait_for(reader.read(4096), timeout=10)
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer
