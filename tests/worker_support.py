"""Worker-tier fixtures (a pytest plugin, see tests/conftest.py): real worker processes, a
webhook receiver, an app that alerts."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job
from tests.conftest import Env, count
from tests.waiting import eventually
from tests.worker.receiver import Receiver, serve

WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cy0xMjM0NTY3ODkwMTIzNDU2"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(env: Env, receiver: Receiver) -> Iterator[WorkerFactory]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(log_to: Path | None = None, **extra: str) -> subprocess.Popen[bytes]:
        variables = {
            "STOCKROOM_WEBHOOK_URL": receiver.url,
            "STOCKROOM_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STOCKROOM_WORKER_SHUTDOWN_GRACE_SECONDS": "3",
            **extra,
        }
        sink = log_to.open("ab") if log_to is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "worker"],
            env=env.process_env(**variables),
            stdout=sink,
            stderr=sink,
        )
        if log_to is not None:
            sink.close()  # type: ignore[union-attr]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
async def alerting_client(env: Env, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(env.settings(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def make_low_stock_job(
    client: httpx.AsyncClient, headers: dict[str, str], sku: str, expect: int = 1
) -> str:
    """A product at 10 with reorder point 5; a pick of 6 crosses it: one webhook job."""
    r = await client.post(
        "/api/v1/catalog/products",
        json={"sku": sku, "title": "t", "unit_price": 1, "reorder_point": 5},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/inventory/restock", json={"sku": sku, "quantity": 10}, headers=headers
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/inventory/adjustments",
        json={"sku": sku, "location_code": "MAIN", "delta": -6, "reason": "pick"},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    jobs = await client.get("/api/v1/jobs?kind=webhook", headers=headers)
    items: list[dict[str, Any]] = jobs.json()["items"]  # newest first
    assert len(items) == expect, items
    return str(items[0]["id"])


async def create_low_stock_jobs(db: Database, *skus: str) -> list[uuid.UUID]:
    """A ``stock.low`` webhook job per SKU, committed together (written as the API writes them)."""
    async with db.transaction() as conn:
        uow = UnitOfWork(conn, Actor.system())
        return [
            await create_job(uow, JobKind.webhook, {"type": "stock.low", "data": {"sku": s}}, 5)
            for s in skus
        ]


async def wait_complete(db: Database, job_id: object, timeout: float, what: str) -> None:
    """Until the job's record says ``complete``."""

    async def complete() -> bool:
        sql = "SELECT count(*) FROM jobs WHERE id = $1 AND status = 'complete'"
        return await count(db, sql, job_id) == 1

    await eventually(complete, timeout=timeout, what=what)
