"""Rate limits per API key (SPEC §4): IETF RateLimit fields on every authenticated answer,
429 problem+json with Retry-After over the limit, one limit shared by every replica through
Redis, and fail-open while Redis is down (a private Redis, stopped); and the report quota."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.ratelimit import RateLimiter
from shared.db.database import Database
from tests.conftest import Env, KeyFactory
from tests.inventory.helpers import PRODUCTS, RESTOCK, make_product, problem
from tests.servers import PrivateRedis
from tests.waiting import eventually

FIELD = re.compile(r'^"default";r=(\d+);t=(\d+)$')
Served = tuple[httpx.AsyncClient, RateLimiter]
ServeApp = Callable[..., AbstractAsyncContextManager[Served]]


@pytest.fixture
def serve(env: Env) -> ServeApp:
    """``async with serve(**settings) as (client, limiter)``: an API replica of its own."""

    @asynccontextmanager
    async def started(**overrides: Any) -> AsyncIterator[Served]:
        # a day-long window unless said otherwise: counts that a test checks exactly must
        # not start again at a minute's turn in the middle of it
        app = create_app(env.settings(**{"rate_limit_window_seconds": 86_400, **overrides}))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client, app.state.rate_limiter

    return started


def remaining(r: httpx.Response) -> int:
    match = FIELD.match(r.headers["ratelimit"])
    assert match, r.headers["ratelimit"]
    assert 1 <= int(match[2]) <= 86_400
    return int(match[1])


async def test_every_authenticated_answer_carries_the_fields(
    serve: ServeApp, make_key: KeyFactory
) -> None:
    reader = await make_key("catalog:read")
    writer = await make_key("admin")
    async with serve(rate_limit_requests=50) as (client, _):
        answers = [
            await client.get(PRODUCTS, headers=reader),  # 200
            await client.get(f"{PRODUCTS}/NOPE-1", headers=reader),  # 404
            await client.post(RESTOCK, json={"sku": "X-1", "quantity": 1}, headers=reader),  # 403
        ]
        await make_product(client, writer, "RL-1")
        restocked = await client.post(RESTOCK, json={"sku": "RL-1", "quantity": 1}, headers=writer)
        assert restocked.status_code == 201  # served by the restock's lane
        answers.append(restocked)
        for r in answers:
            assert r.headers["ratelimit-policy"] == '"default";q=50;w=86400', r
        assert [remaining(r) for r in answers[:3]] == [49, 48, 47]
        assert remaining(restocked) == 48  # the writer's second request
        # no key, a malformed one, or one the database does not know: no fields, not counted
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer sr_"}):
            r = await client.get(PRODUCTS, headers=headers)
            assert r.status_code == 401 and "ratelimit" not in r.headers
        unknown = {"Authorization": "Bearer sr_000000000000_wrong"}
        assert (await client.get(PRODUCTS, headers=unknown)).status_code == 401
        assert "ratelimit" not in (await client.get("/healthz")).headers
        assert remaining(await client.get(PRODUCTS, headers=reader)) == 46


async def test_over_the_limit_is_429_with_retry_after(
    serve: ServeApp, make_key: KeyFactory
) -> None:
    key = await make_key("catalog:read")
    other = await make_key("catalog:read")
    async with serve(rate_limit_requests=3) as (client, _):
        for _ in range(3):
            assert (await client.get(PRODUCTS, headers=key)).status_code == 200
        r = await client.get(PRODUCTS, headers=key)
        body = problem(r, 429, "rate-limited")
        assert 1 <= int(r.headers["retry-after"]) <= 86_400
        assert remaining(r) == 0 and body["detail"]
        # a restock too (its lane is behind the limiter), and another key is not affected
        r = await client.post(RESTOCK, json={"sku": "X-1", "quantity": 1}, headers=key)
        problem(r, 429, "rate-limited")
        assert (await client.get(PRODUCTS, headers=other)).status_code == 200


async def test_replicas_share_one_limit_through_redis(
    serve: ServeApp, make_key: KeyFactory
) -> None:
    key = await make_key("catalog:read")
    async with (
        serve(rate_limit_requests=6) as (first, first_limiter),
        serve(rate_limit_requests=6) as (second, second_limiter),
    ):
        for _ in range(4):
            assert (await first.get(PRODUCTS, headers=key)).status_code == 200
        await first_limiter.sync()  # as the background task does every 0.1 s
        # 5 left, or 1 if the second replica's own background sync came first
        assert remaining(await second.get(PRODUCTS, headers=key)) in (5, 1)
        await second_limiter.sync()  # now it knows: 4 + 1 used of 6
        assert remaining(await second.get(PRODUCTS, headers=key)) == 0
        problem(await second.get(PRODUCTS, headers=key), 429, "rate-limited")
        await second_limiter.sync()
        await first_limiter.sync()
        problem(await first.get(PRODUCTS, headers=key), 429, "rate-limited")


async def test_requests_pass_while_redis_is_down(
    serve: ServeApp, make_key: KeyFactory, private_redis: PrivateRedis
) -> None:
    key = await make_key("catalog:read")
    async with serve(rate_limit_requests=2, redis_url=private_redis.url) as (client, limiter):
        for _ in range(2):
            assert (await client.get(PRODUCTS, headers=key)).status_code == 200
        problem(await client.get(PRODUCTS, headers=key), 429)
        private_redis.stop()

        async def passes() -> bool:
            return (await client.get(PRODUCTS, headers=key)).status_code == 200

        await eventually(passes, timeout=10, what="the limiter to fail open")
        assert not limiter.healthy
        for _ in range(5):  # every request, not one in a while
            r = await client.get(PRODUCTS, headers=key)
            assert r.status_code == 200 and "ratelimit" in r.headers
        private_redis.start()

        async def limits_again() -> bool:
            return (await client.get(PRODUCTS, headers=key)).status_code == 429

        await eventually(limits_again, timeout=10, what="the limiter to limit again")


async def test_zero_turns_limiting_off(serve: ServeApp, make_key: KeyFactory) -> None:
    key = await make_key("catalog:read")
    async with serve(rate_limit_requests=0) as (client, limiter):
        assert limiter is None
        r = await client.get(PRODUCTS, headers=key)
        assert r.status_code == 200 and "ratelimit" not in r.headers


REPORT = {"kind": "valuation", "format": "csv"}


async def test_a_key_has_a_report_quota(
    serve: ServeApp, make_key: KeyFactory, db: Database
) -> None:
    key = await make_key("reports:write")
    other = await make_key("reports:write")
    settings = {"report_quota_pending": 2, "report_quota_bytes": 1000}
    async with serve(**settings) as (client, _):
        ids = []
        for _ in range(2):  # no worker runs: they stay queued
            r = await client.post("/api/v1/reports", json=REPORT, headers=key)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        retried = {**key, "Idempotency-Key": "third-report"}
        r = await client.post("/api/v1/reports", json=REPORT, headers=retried)
        body = problem(r, 429, "report-quota-exceeded")
        assert body["pending"] == 2 and int(r.headers["retry-after"]) >= 1
        assert (await client.post("/api/v1/reports", json=REPORT, headers=other)).status_code == 202

        # both finish, holding 1,200 bytes between them: the cap is now on what the key keeps
        async with db.pool.acquire() as conn:
            for report_id in ids:
                await conn.execute(
                    "UPDATE jobs SET status = 'complete', finished_at = now() WHERE id = $1",
                    uuid.UUID(report_id),
                )
                await conn.execute(
                    "INSERT INTO reports (id, blob_id, filename, content_type, row_count,"
                    " size_bytes, chart_bytes, totals, generated_at, expires_at)"
                    " VALUES ($1, $2, 'r.csv', 'text/csv', 1, 500, 100, '{}', now(),"
                    " now() + interval '1 hour')",
                    uuid.UUID(report_id),
                    uuid.uuid4(),
                )
        # the 429 was not stored under its Idempotency-Key: the retry is judged afresh
        r = await client.post("/api/v1/reports", json=REPORT, headers=retried)
        body = problem(r, 429, "report-quota-exceeded")
        assert body["stored_bytes"] == 1200
        assert 60 <= int(r.headers["retry-after"]) <= 3600
        async with db.pool.acquire() as conn:
            await conn.execute("UPDATE reports SET purged_at = now()")
        r = await client.post("/api/v1/reports", json=REPORT, headers=retried)
        assert r.status_code == 202, r.text
