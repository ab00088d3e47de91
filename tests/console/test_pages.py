"""The console's pages and actions over HTTP: what they show, cancel and retry through the
jobs service audited as the signed-in key, bulk retry, the chart's numbers and their query's
indexes, problem pages, and Redis down."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from api.app import create_app
from shared.console.queries import queue_history
from shared.db.database import Database
from shared.embedded import free_port
from tests.conftest import Env, count
from tests.console.support import key_of, signed_in_csrf
from tests.worker_support import create_low_stock_jobs


async def _fail(db: Database, *job_ids: uuid.UUID) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE jobs SET status = 'failed', attempts = 5, finished_at = now(),"
            " error = 'receiver answered 500' WHERE id = ANY($1::uuid[])",
            list(job_ids),
        )


async def test_each_page_renders_and_refreshes_as_a_fragment(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await create_low_stock_jobs(db, "PAGE-1")
    await signed_in_csrf(client, key_of(admin))
    for path, heading in (
        ("/console", "Overview"),
        ("/console/workers", "Workers"),
        ("/console/jobs", "Jobs"),
        ("/console/audit", "Audit log"),
        ("/console/reports", "Reports"),
    ):
        r = await client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        assert f"<h1>{heading}</h1>" in r.text and "<!doctype html>" in r.text
        assert 'aria-current="page"' in r.text
        fragment = await client.get(path, headers={"X-Console-Fragment": "1"})
        assert fragment.status_code == 200
        assert f"<h1>{heading}</h1>" in fragment.text and "<html" not in fragment.text
    overview = (await client.get("/console")).text
    assert re.search(r'id="stat-queued">1<', overview), overview
    assert "<svg" in overview and "PostgreSQL up" in overview and "Redis up" in overview


async def test_cancel_and_retry_are_audited_as_the_signed_in_key(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    queued, failed = await create_low_stock_jobs(db, "AUD-1", "AUD-2")
    await _fail(db, failed)
    csrf = await signed_in_csrf(client, key_of(admin))
    r = await client.post(
        f"/console/jobs/{queued}/cancel",
        data={"csrf_token": csrf, "back": "/console/jobs?status=queued"},
        headers={"X-Request-ID": "console-cancel-1"},
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/jobs?status=queued&notice=")
    r = await client.post(
        f"/console/jobs/{failed}/retry",
        data={"csrf_token": csrf, "back": "https://evil.example/console"},
        headers={"X-Request-ID": "console-retry-1"},
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/console?notice=")
    async with db.pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT payload, request_id, actor_key_id FROM jobs WHERE kind = 'audit'"
            " ORDER BY created_at"
        )
        retried = await conn.fetchval("SELECT count(*) FROM jobs WHERE retry_of = $1", failed)
        admin_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'admin'")
    assert retried == 1
    assert [e["payload"]["action"] for e in events] == ["job.cancelled", "job.retried"]
    assert [e["request_id"] for e in events] == ["console-cancel-1", "console-retry-1"]
    for event in events:
        assert event["actor_key_id"] == admin_id
        assert event["payload"]["actor"] == {"key_id": str(admin_id), "name": "admin"}
    # a finished job cannot be cancelled: the same conflict as the API's, as a page
    r = await client.post(f"/console/jobs/{queued}/cancel", data={"csrf_token": csrf})
    assert r.status_code == 409 and "cannot be cancelled" in r.text
    assert r.headers["content-type"].startswith("text/html")


async def test_bulk_retry_retries_the_failed_jobs_listed(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    jobs = await create_low_stock_jobs(db, "BULK-1", "BULK-2", "BULK-3")
    await _fail(db, *jobs[:2])
    csrf = await signed_in_csrf(client, key_of(admin))
    page = await client.get("/console/jobs?status=failed&kind=webhook")
    listed = re.findall(r'name="job_id" value="([^"]+)"', page.text)
    assert sorted(listed) == sorted(str(j) for j in jobs[:2])
    r = await client.post(
        "/console/jobs/retry",
        data={"csrf_token": csrf, "job_id": [*listed, str(jobs[2])]},  # one not failed
    )
    assert r.status_code == 303, r.text
    assert "2 failed job(s) retried, 1 skipped" in httpx.URL(r.headers["location"]).params["notice"]
    sql = "SELECT count(*) FROM jobs WHERE retry_of = ANY($1::uuid[])"
    assert await count(db, sql, jobs) == 2
    assert await count(db, "SELECT count(*) FROM jobs WHERE payload->>'action' = 'job.retried'")
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'audit'") == 2


async def test_the_chart_counts_the_last_hour_from_the_job_records(db: Database) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO jobs (kind, payload, max_attempts, status, created_at, started_at,
                              finished_at)
            VALUES
              -- completed 10 minutes ago, having waited 5
              ('report', '{}', 1, 'complete', now() - interval '15 minutes',
               now() - interval '10 minutes', now() - interval '10 minutes'),
              ('webhook', '{}', 1, 'failed', now() - interval '12 minutes',
               now() - interval '10 minutes', now() - interval '10 minutes'),
              -- waiting since 30 minutes ago, and one since three hours ago
              ('webhook', '{}', 1, 'queued', now() - interval '30 minutes', NULL, NULL),
              ('webhook', '{}', 1, 'queued', now() - interval '3 hours', NULL, NULL),
              -- audit events are not the queue an operator watches
              ('audit', '{}', 1, 'complete', now() - interval '5 minutes',
               now() - interval '5 minutes', now() - interval '5 minutes')
            """
        )
        minutes = await queue_history(conn)
    assert len(minutes) == 60
    assert minutes[0].depth == 1  # the three-hour-old one
    assert minutes[-1].depth == 2
    assert max(m.depth for m in minutes) == 4
    assert sum(m.completed for m in minutes) == 1 and sum(m.failed for m in minutes) == 1
    [finishing] = [m for m in minutes if m.completed]
    assert finishing.failed == 1


async def test_the_chart_query_is_served_by_indexes(db: Database) -> None:
    """The jobs table is mostly audit events (one per mutation): the chart must never scan
    it. With sequential scans priced out, the plan shows which indexes serve it."""
    async with db.transaction() as conn:
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        from shared.console.queries import _CHART  # the statement as it runs

        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {_CHART}", ["report", "webhook"]))
    assert "Seq Scan on jobs" not in plan, plan
    assert "ix_jobs_kind_created_at_id" in plan and "ix_jobs_status_created_at_id" in plan


async def test_a_bad_filter_or_cursor_is_a_problem_page(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await signed_in_csrf(client, key_of(admin))
    for path in (
        "/console/jobs?status=lost",
        "/console/jobs?cursor=nonsense",
        "/console/audit?since=yesterday",
        "/console/reports?cursor=nonsense",
    ):
        r = await client.get(path)
        assert r.status_code == 422, path
        assert r.headers["content-type"].startswith("text/html")
        assert "<h1" in r.text and "Traceback" not in r.text
    r = await client.get(f"/console/reports/{uuid.uuid4()}/download")
    assert r.status_code == 404 and "no report" in r.text


async def test_the_pages_say_when_redis_is_down(env: Env, admin: dict[str, str]) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app: Any = create_app(env.settings(redis_url=nowhere))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stockroom.test") as c:
            await signed_in_csrf(c, key_of(admin))
            overview = await c.get("/console")
            workers = await c.get("/console/workers")
            jobs = await c.get("/console/jobs")
    assert overview.status_code == 200 and "Redis is down" in overview.text
    assert 'id="stat-workers"><span class="down">unknown' in overview.text
    assert workers.status_code == 200 and "unknown while Redis is down" in workers.text
    assert jobs.status_code == 200 and "Redis is down" in jobs.text
