"""Ops: queue and worker views, metrics, the audit log API, CLI changes audited, JSON logs
carrying the request id into jobs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from shared.db.database import Database
from tests.conftest import Env, KeyFactory, count
from tests.waiting import eventually
from tests.worker_support import WorkerFactory, make_low_stock_job


async def test_queue_view_counts_durable_jobs(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    for i in range(3):
        await client.post(
            "/api/v1/catalog/products",
            json={"sku": f"Q-{i}0", "title": "t", "unit_price": 1},
            headers=admin,
        )
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET created_at = now() - interval '30 seconds'")
        await conn.execute(
            "INSERT INTO jobs (kind, payload, max_attempts, status, finished_at, error)"
            " VALUES ('webhook', '{}', 1, 'failed', now(), 'x'),"
            "        ('webhook', '{}', 1, 'failed', now() - interval '2 hours', 'old')"
        )
        await conn.execute(
            "INSERT INTO jobs (kind, payload, max_attempts, run_after)"
            " VALUES ('webhook', '{}', 1, now() + interval '1 hour')"
        )
    r = await client.get("/api/v1/ops/queue", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["queued"] == 3 and body["deferred"] == 1 and body["in_progress"] == 0
    assert body["failed_last_hour"] == 1
    assert 29 <= body["oldest_queued_age_seconds"] < 120
    # what ARQ holds: the audit drain's wake-up (coalesced; the webhook records above were
    # never handed over, and no worker runs)
    assert body["redis_ready"] >= 1
    assert (body["redis_deferred"], body["redis_in_progress"]) == (0, 0)


async def test_workers_view_lists_each_live_worker(
    client: httpx.AsyncClient, admin: dict[str, str], start_worker: WorkerFactory
) -> None:
    procs = [start_worker(), start_worker()]

    ours = {p.pid for p in procs}

    async def both_live() -> bool:
        # (workers SIGKILLed by earlier tests keep a heartbeat for up to its 20 s TTL)
        r = await client.get("/api/v1/ops/workers", headers=admin)
        return ours <= {w["pid"] for w in r.json()}

    await eventually(both_live, timeout=30, what="two worker heartbeats")
    workers = [
        w
        for w in (await client.get("/api/v1/ops/workers", headers=admin)).json()
        if w["pid"] in ours
    ]
    assert len(workers) == 2
    assert {
        "id",
        "host",
        "pid",
        "started_at",
        "last_heartbeat",
        "jobs_running",
        "jobs_done",
    } <= set(workers[0])
    procs[0].send_signal(signal.SIGTERM)
    procs[0].wait(timeout=30)

    async def one_live() -> bool:
        r = await client.get("/api/v1/ops/workers", headers=admin)
        pids = {w["pid"] for w in r.json()}
        return procs[0].pid not in pids and procs[1].pid in pids

    await eventually(one_live, timeout=30, what="the stopped worker to leave the list")


async def test_metrics_expose_the_named_series(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await client.post(
        "/api/v1/catalog/products",
        json={"sku": "MET-1", "title": "t", "unit_price": 1},
        headers=admin,
    )
    await client.get("/api/v1/catalog/products/MET-1", headers=admin)
    async with db.pool.acquire() as conn:  # finished jobs, as workers leave them
        await conn.execute(
            "INSERT INTO jobs (kind, payload, max_attempts, status, started_at, finished_at)"
            " VALUES ('webhook', '{}', 5, 'complete', now() - interval '0.3 s', now()),"
            "        ('webhook', '{}', 5, 'complete', now() - interval '20 s', now()),"
            "        ('report', '{}', 5, 'failed', now() - interval '2 s', now())"
        )

    async def fresh() -> bool:  # the snapshot is taken at most once a second
        return (
            'stockroom_jobs{kind="report",status="failed"} 1.0'
            in (await client.get("/metrics")).text
        )

    await eventually(fresh, timeout=5, what="a snapshot with the new records")
    r = await client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert (
        'stockroom_http_requests_total{method="GET",route="/api/v1/catalog/products/{sku}",status="200"}'
        in text
    )
    assert "stockroom_http_request_duration_seconds_bucket" in text
    assert 'stockroom_jobs_enqueued_total{kind="audit"}' in text
    assert 'stockroom_queue_depth{state="queued"}' in text
    assert "stockroom_live_workers" in text
    assert "stockroom_oldest_queued_age_seconds" in text
    # outcomes by kind and status, and durations, from the durable records
    assert 'stockroom_jobs{kind="webhook",status="complete"} 2.0' in text
    assert 'stockroom_jobs{kind="audit",status="queued"} 1.0' in text
    webhook = 'kind="webhook",le="{}",status="complete"'
    assert "stockroom_job_record_duration_seconds_bucket{" + webhook.format("0.1") + "} 0.0" in text
    assert "stockroom_job_record_duration_seconds_bucket{" + webhook.format("0.5") + "} 1.0" in text
    assert (
        "stockroom_job_record_duration_seconds_bucket{" + webhook.format("+Inf") + "} 2.0" in text
    )
    assert 'stockroom_job_record_duration_seconds_count{kind="report",status="failed"} 1.0' in text
    # and what ARQ holds
    assert 'stockroom_arq_jobs{state="ready"}' in text
    assert 'stockroom_arq_jobs{state="in_progress"}' in text


async def test_metrics_scrapes_share_one_snapshot_until_it_is_due_again(
    app: Any, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await client.get("/metrics")
    snapshot = app.state.metrics_snapshot
    snapshot.EVERY_SECONDS = 3600  # (one second in production) so that none is due here
    try:
        first = (await client.get("/metrics")).text
        await client.get("/api/v1/catalog/products", headers=admin)  # counted, not shown yet
        bodies = await asyncio.gather(*(client.get("/metrics") for _ in range(5)))
        assert {r.text for r in bodies} == {first}
    finally:
        del snapshot.EVERY_SECONDS

    async def taken_again() -> bool:
        return (await client.get("/metrics")).text != first

    await eventually(taken_again, timeout=5, what="the next snapshot, a second later")


async def test_audit_log_filters_and_pages(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    make_key: KeyFactory,
    start_worker: WorkerFactory,
    db: Database,
) -> None:
    for sku in ("AUD-10", "AUD-20"):
        await client.post(
            "/api/v1/catalog/products",
            json={"sku": sku, "title": "t", "unit_price": 1},
            headers=admin,
        )
    await client.post(
        "/api/v1/inventory/restock/batch",
        json={"lines": [{"sku": "AUD-10", "quantity": 1}, {"sku": "AUD-20", "quantity": 2}]},
        headers=admin,
    )
    await client.post(
        "/api/v1/inventory/restock",
        json={"sku": "AUD-20", "quantity": 3},
        headers={**admin, "X-Request-ID": "audit-req-1"},
    )
    start_worker()

    async def landed() -> bool:
        return await count(db, "SELECT count(*) FROM audit_entries") == 4

    await eventually(landed, timeout=30, what="4 audit entries")
    reader = await make_key("audit:read")
    page = (await client.get("/api/v1/audit?sku=AUD-20", headers=reader)).json()
    assert [e["action"] for e in page["items"]] == [
        "inventory.restocked",
        "inventory.restocked_batch",
        "product.created",
    ]
    newest = page["items"][0]
    assert newest["request_id"] == "audit-req-1"
    assert newest["actor"]["name"] == "admin" and newest["actor"]["key_id"]
    assert newest["subject"] == "product:AUD-20" and newest["payload"]["quantity"] == 3
    only = (await client.get("/api/v1/audit?action=product.created", headers=reader)).json()
    assert len(only["items"]) == 2
    seen, cursor = [], None
    while True:
        url = "/api/v1/audit?limit=1" + (f"&cursor={cursor}" if cursor else "")
        body = (await client.get(url, headers=reader)).json()
        seen += [e["id"] for e in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 4
    stamp = newest["created_at"]
    before = (await client.get("/api/v1/audit", params={"until": stamp}, headers=reader)).json()
    assert newest["id"] not in [e["id"] for e in before["items"]]
    since = (await client.get("/api/v1/audit", params={"since": stamp}, headers=reader)).json()
    assert newest["id"] in [e["id"] for e in since["items"]]
    assert (
        await client.get("/api/v1/audit?since=2026-01-01T00:00:00", headers=reader)
    ).status_code == 422


async def test_key_changes_from_the_cli_are_audited(
    env: Env, db: Database, start_worker: WorkerFactory
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "keys",
            "create",
            "--name",
            "ops",
            "--scopes",
            "admin",
            "--json",
        ],
        env=env.process_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    key_id = json.loads(out.stdout)["id"]
    subprocess.run(
        [sys.executable, "-m", "shared.cli", "keys", "revoke", key_id],
        env=env.process_env(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    start_worker()  # the relay hands over events written with no API process to dispatch them

    async def landed() -> bool:
        return (
            await count(
                db, "SELECT count(*) FROM audit_entries WHERE subject = $1", f"key:{key_id}"
            )
            == 2
        )

    await eventually(landed, timeout=30, what="the key's two audit entries")
    async with db.pool.acquire() as conn:
        actions = await conn.fetch("SELECT action, actor_name FROM audit_entries ORDER BY id")
    assert [(r["action"], r["actor_name"]) for r in actions] == [
        ("key.created", "cli"),
        ("key.revoked", "cli"),
    ]


async def test_json_logs_carry_the_request_id_into_the_job(
    alerting_client: httpx.AsyncClient,
    admin: dict[str, str],
    start_worker: WorkerFactory,
    tmp_path: Path,
    db: Database,
) -> None:
    log_file = tmp_path / "worker.log"
    worker = start_worker(STOCKROOM_ENV="production", log_to=log_file)
    job_id = await make_low_stock_job(
        alerting_client, {**admin, "X-Request-ID": "trace-77"}, "LOG-1"
    )

    async def done() -> bool:
        return (
            await count(
                db, "SELECT count(*) FROM jobs WHERE id = $1 AND status = 'complete'", job_id
            )
            == 1
        )

    await eventually(done, timeout=30, what="the webhook job")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    completed = [line for line in lines if line["msg"] == "job complete"]
    assert (
        completed and completed[0]["request_id"] == "trace-77" and completed[0]["job_id"] == job_id
    )
