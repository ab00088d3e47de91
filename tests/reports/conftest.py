"""Reports fixtures: worker processes, data with known totals, and helpers to run a report
through the API and fetch its files."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.db.database import Database
from tests.conftest import Env
from tests.waiting import eventually

WorkerFactory = Callable[..., subprocess.Popen[bytes]]


def _workers(env: Env) -> Iterator[WorkerFactory]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "worker"],
            env=env.process_env(STOCKROOM_WORKER_SHUTDOWN_GRACE_SECONDS="3", **extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def start_worker(env: Env) -> Iterator[WorkerFactory]:
    """Worker processes for one test."""
    yield from _workers(env)


@pytest.fixture(scope="module")
def module_worker(env: Env) -> Iterator[subprocess.Popen[bytes]]:
    """One worker for a module's tests (its chart renderer stays warm between reports)."""
    for start in _workers(env):
        yield start()


async def job(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/jobs/{job_id}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def wait_finished(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str, timeout: float = 30
) -> dict[str, Any]:
    async def finished() -> bool:
        return (await job(client, headers, job_id))["status"] in ("complete", "failed", "cancelled")

    await eventually(finished, timeout=timeout, what=f"job {job_id} to finish")
    return await job(client, headers, job_id)


async def request_report(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> str:
    r = await client.post("/api/v1/reports", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
    return str(r.json()["id"])


async def run_report(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """Request, wait, check the metadata, download: ``(metadata, file)``."""
    report_id = await request_report(client, headers, body)
    done = await wait_finished(client, headers, report_id)
    assert done["status"] == "complete", done["error"]
    meta = (await client.get(f"/api/v1/reports/{report_id}", headers=headers)).json()
    r = await client.get(meta["links"]["download"], headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.content) == meta["size_bytes"] == done["result"]["size_bytes"]
    assert r.headers["content-disposition"].startswith("attachment; filename=")
    return meta, r.content


class Data:
    """A small warehouse with known numbers, written directly (a report reads the tables)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def product(
        self, sku: str, price: str, category: str | None = None, reorder_point: int = 0
    ) -> int:
        async with self.db.pool.acquire() as conn:
            product_id: int = await conn.fetchval(
                "INSERT INTO products (sku, title, unit_price, category, reorder_point)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                sku,
                f"Item {sku}",
                Decimal(price),
                category,
                reorder_point,
            )
        return product_id

    async def location(self, code: str) -> int:
        async with self.db.pool.acquire() as conn:
            location_id: int = await conn.fetchval(
                "INSERT INTO locations (code) VALUES ($1)"
                " ON CONFLICT (code) DO UPDATE SET code = excluded.code RETURNING id",
                code,
            )
        return location_id

    async def move(self, sku: str, location: str, delta: int, at: datetime | None = None) -> None:
        """A ledger movement and its stock level, as the inventory service would write them."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            ids = await conn.fetchrow(
                "SELECT p.id AS product_id, l.id AS location_id"
                " FROM products p, locations l WHERE p.sku = $1 AND l.code = $2",
                sku,
                location,
            )
            assert ids is not None
            await conn.execute(
                "INSERT INTO movements (product_id, location_id, delta, reason, created_at)"
                " VALUES ($1, $2, $3, $4, coalesce($5, now()))",
                ids["product_id"],
                ids["location_id"],
                delta,
                "restock" if delta > 0 else "pick",
                at,
            )
            # (a CHECK applies to the row an INSERT proposes, before ON CONFLICT: a decrease
            # is an UPDATE)
            await conn.execute(
                """
                INSERT INTO stock_levels (product_id, location_id, quantity)
                VALUES ($1, $2, greatest($3, 0))
                ON CONFLICT (product_id, location_id)
                    DO UPDATE SET quantity = stock_levels.quantity + $3
                """,
                ids["product_id"],
                ids["location_id"],
                delta,
            )


@pytest.fixture
async def data(db: Database) -> AsyncIterator[Data]:
    yield Data(db)
