"""The front door under slow clients, behind a real uvicorn: 500 connections trickling their
headers or their bodies at a byte a second neither take the process's memory nor stop a
normal client's restocks; a body that does not arrive in time is a 408; a key that does not
exist is a 401 before any of the body is read."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

import httpx

from api.app import create_app
from tests.api.serving import restock_head_with_unknown_key, served_by_uvicorn
from tests.conftest import Env
from tests.inventory.helpers import RESTOCK, make_product

SLOW_CLIENTS = 500
BODY_TIMEOUT = 3.0


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def _trickle(
    host: str, port: int, fast: bytes, slow: bytes, answers: list[bytes], stop: asyncio.Event
) -> None:
    """Send ``fast``, then ``slow`` a byte a second until the server answers (kept in
    ``answers``) or ``stop``."""
    reader, writer = await asyncio.open_connection(host, port)
    reply = asyncio.create_task(reader.read(4096))
    try:
        writer.write(fast)
        await writer.drain()
        for byte in slow:
            if stop.is_set() or reply.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([reply], timeout=1.0)
        if reply.done():
            answers.append(reply.result())
    except OSError:
        answers.append(b"reset")
    finally:
        reply.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_slow_clients_neither_take_the_memory_nor_stop_a_restock(
    env: Env, admin: dict[str, str]
) -> None:
    app = create_app(env.settings(api_body_read_timeout=BODY_TIMEOUT))
    async with served_by_uvicorn(app) as (host, port):
        base = f"http://{host}:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await make_product(http, admin, "SLOW-1")
            token = admin["Authorization"].encode()
            body_head = (
                (
                    f"POST {RESTOCK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 1000000\r\n"
                ).encode()
                + b"Authorization: "
                + token
                + b"\r\n\r\n"
            )
            header_trickle = f"POST {RESTOCK} HTTP/1.1\r\nHost: x\r\n".encode() + b"X: " * 500
            stop = asyncio.Event()
            body_answers: list[bytes] = []
            header_answers: list[bytes] = []
            rss_before = _rss_mib()
            slow: list[asyncio.Task[Any]] = []
            for n in range(SLOW_CLIENTS):
                if n % 2:
                    job = _trickle(host, port, body_head, b"x" * 1000, body_answers, stop)
                else:
                    job = _trickle(host, port, b"", header_trickle, header_answers, stop)
                slow.append(asyncio.create_task(job))
            one = {"sku": "SLOW-1", "quantity": 1}
            try:
                for _ in range(5):  # a normal client meanwhile
                    started = time.monotonic()
                    r = await http.post(RESTOCK, json=one, headers=admin)
                    assert r.status_code == 201, r.text
                    assert time.monotonic() - started < 10
                # the slow bodies: each a 408 once its time is up, and its connection let go
                deadline = time.monotonic() + BODY_TIMEOUT + 30
                while len(body_answers) < SLOW_CLIENTS // 2 and time.monotonic() < deadline:
                    await asyncio.wait(slow, timeout=0.5)
                r = await http.post(RESTOCK, json=one, headers=admin)
                assert r.status_code == 201, r.text
                rss_after = _rss_mib()
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*slow), timeout=60)
            assert len(body_answers) == SLOW_CLIENTS // 2
            assert all(a.startswith(b"HTTP/1.1 408") for a in body_answers), body_answers[:3]
            assert rss_after - rss_before < 64, (rss_before, rss_after)
            assert r.json()["stock"]["quantity"] == 6


async def test_an_unknown_key_is_refused_before_its_body_is_read(env: Env) -> None:
    app = create_app(env.settings())
    async with served_by_uvicorn(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(restock_head_with_unknown_key(1000000))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), timeout=10)  # no body sent
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer
        assert b"application/problem+json" in answer
