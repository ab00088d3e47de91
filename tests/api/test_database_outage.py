"""A database that stops and starts again under load (a private PostgreSQL, never the
machine's shared one): every request is answered, 201 or 503 problem+json with Retry-After,
fast; none is dropped, none is a 500; the API recovers by itself; and no unit is lost or
counted twice (a 503's Idempotency-Key, retried, replays what committed or runs it once)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from api.app import create_app
from shared.auth import service as keys_service
from shared.db.migrate import upgrade_async
from shared.embedded import EmbeddedPostgres, free_port
from tests.api.serving import served_by_uvicorn
from tests.conftest import Env
from tests.inventory.helpers import RESTOCK
from tests.waiting import eventually, holds

CLIENTS = 6
SKU = "OUTAGE-1"


@dataclass
class Served:
    """The app on a private PostgreSQL, behind a real uvicorn (a dropped connection shows)."""

    pg: EmbeddedPostgres
    base_url: str
    headers: dict[str, str]


@pytest.fixture
async def served(tmp_path: Path, env: Env) -> AsyncIterator[Served]:
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    await asyncio.to_thread(pg.start)
    queue_name = f"{env.queue_name}-outage"
    try:
        await upgrade_async(pg.url)
        conn = await asyncpg.connect(pg.url)
        try:
            key = await keys_service.create_key(conn, "outage", ["admin"])
            await conn.execute(
                "INSERT INTO products (sku, title, unit_price) VALUES ($1, 'Outage', 1)", SKU
            )
        finally:
            await conn.close()
        app = create_app(env.settings(database_url=pg.url, queue_name=queue_name))
        async with served_by_uvicorn(app) as (host, port):
            yield Served(pg, f"http://{host}:{port}", {"Authorization": f"Bearer {key.key}"})
    finally:
        await asyncio.to_thread(pg.stop)
        redis = Redis.from_url(env.redis_url)
        try:
            async for name in redis.scan_iter(match=f"*{queue_name}*", count=1000):
                await redis.delete(name)
        finally:
            await redis.aclose()


@dataclass
class Load:
    """What the clients saw: the quantity of each key answered 201, the keys answered 503
    (with how long that took), and anything else."""

    created: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    seconds_to_503: list[float] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, served: Served, number: int) -> None:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
            sent = 0
            while not self.stop.is_set():
                sent += 1
                key, quantity = f"c{number}-{sent}-{uuid.uuid4().hex[:6]}", number + 1
                started = time.monotonic()
                try:
                    r = await http.post(
                        RESTOCK,
                        json={"sku": SKU, "quantity": quantity},
                        headers={**served.headers, "Idempotency-Key": key},
                    )
                except httpx.TransportError as exc:  # a dropped connection
                    self.other.append(f"{type(exc).__name__}: {exc}")
                    continue
                self._record(r, key, quantity, time.monotonic() - started)

    def _record(self, r: httpx.Response, key: str, quantity: int, seconds: float) -> None:
        if r.status_code == 201:
            self.created[key] = quantity
        elif (
            r.status_code == 503
            and r.headers["content-type"] == "application/problem+json"
            and r.headers.get("retry-after") == "1"
        ):
            self.unavailable[key] = quantity
            self.seconds_to_503.append(seconds)
        else:
            self.other.append(f"{r.status_code} {r.headers.get('content-type')}: {r.text}")


async def test_postgresql_stopped_and_started_under_load_is_503s_then_recovery(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    load = Load()
    clients = [asyncio.create_task(load.client(served, n)) for n in range(CLIENTS)]
    try:
        await eventually(lambda: holds(len(load.created) >= 20), what="restocks before")
        await asyncio.to_thread(served.pg.stop)
        await eventually(lambda: holds(len(load.unavailable) >= 20), what="503s meanwhile")
        await asyncio.to_thread(served.pg.start)
        recovered = len(load.created)
        await eventually(
            lambda: holds(len(load.created) >= recovered + 20), timeout=30, what="recovery"
        )
    finally:
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)

    assert load.other == [], load.other[:5]  # no dropped connection, no 500, no other status
    assert max(load.seconds_to_503) < 2.0, sorted(load.seconds_to_503)[-5:]
    # one line per failure: no traceback
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # every 503, retried with its key, is a 201: the replay of what committed, or a first run
    replayed = 0
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
        for key, quantity in load.unavailable.items():
            r = await http.post(
                RESTOCK,
                json={"sku": SKU, "quantity": quantity},
                headers={**served.headers, "Idempotency-Key": key},
            )
            assert r.status_code == 201, r.text
            replayed += r.headers.get("idempotent-replayed") == "true"
    conn = await asyncpg.connect(served.pg.url)
    try:
        ledger = await conn.fetchrow("SELECT count(*) AS n, sum(delta) AS units FROM movements")
        level = await conn.fetchval("SELECT sum(quantity) FROM stock_levels")
        keys = await conn.fetchval("SELECT count(*) FROM idempotency_keys")
    finally:
        await conn.close()
    answered = {**load.created, **load.unavailable}
    assert ledger["n"] == len(answered) == keys  # no restock lost, none doubled
    assert ledger["units"] == sum(answered.values()) == level
    logging.getLogger("test").info(
        "outage: %d answered 201, %d answered 503 (%d of them had committed: replayed),"
        " slowest 503 %.3f s",
        len(load.created),
        len(load.unavailable),
        replayed,
        max(load.seconds_to_503),
    )
