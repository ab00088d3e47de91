"""Errors are problem+json everywhere; request ids; body size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.db.database import Database
from tests.conftest import Env, count

PRODUCTS = "/api/v1/catalog/products"


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    return body


async def test_framework_errors_are_problems(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    assert_problem(await client.get("/api/v1/nowhere", headers=admin), 404)
    assert_problem(await client.get("/nowhere"), 404)
    assert_problem(await client.put(PRODUCTS, headers=admin), 405)
    body = assert_problem(
        await client.post(
            PRODUCTS, content=b"{", headers={**admin, "Content-Type": "application/json"}
        ),
        422,
    )
    assert body["errors"] and {"loc", "msg", "type"} <= set(body["errors"][0])


async def test_validation_errors_list_each_field(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = assert_problem(
        await client.post(
            PRODUCTS, json={"sku": "x", "unit_price": True, "extra": 1}, headers=admin
        ),
        422,
    )
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert ("body", "sku") in locs and ("body", "unit_price") in locs
    assert ("body", "title") in locs and ("body", "extra") in locs


@pytest.fixture
async def failing_client(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(env.settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2 SELECT * FROM api_keys")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def test_unhandled_error_is_a_bare_500(failing_client: httpx.AsyncClient) -> None:
    r = await failing_client.get("/boom", headers={"X-Request-ID": "trace-me-1"})
    body = assert_problem(r, 500)
    assert "hunter2" not in r.text and "SELECT" not in r.text and "Traceback" not in r.text
    assert body["detail"]


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = (await client.get("/healthz")).headers["x-request-id"]
    assert len(generated) >= 16
    # a hostile value is replaced, not echoed
    r = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert r.headers["x-request-id"] != "x" * 500


async def test_request_id_reaches_the_jobs_a_request_writes(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    r = await client.post(
        PRODUCTS,
        json={"sku": "RID-1", "title": "t", "unit_price": 1},
        headers={**admin, "X-Request-ID": "req-42"},
    )
    assert r.status_code == 201
    assert await count(db, "SELECT count(*) FROM jobs WHERE request_id = 'req-42'") == 1


async def test_body_over_limit_is_413(env: Env, db: Database, admin: dict[str, str]) -> None:
    app = create_app(env.settings(max_body_bytes=2048))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            big = {"sku": "BIG-1", "title": "t", "unit_price": 1, "description": "x" * 4000}
            assert_problem(await c.post(PRODUCTS, json=big, headers=admin), 413)

            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"sku": "BIG-2", "title": "t", "unit_price": 1, "description": "'
                for _ in range(10):
                    yield b"x" * 500
                yield b'"}'

            streamed = await c.post(
                PRODUCTS, content=chunks(), headers={**admin, "Content-Type": "application/json"}
            )
            assert_problem(streamed, 413)
            small = {"sku": "SMALL-1", "title": "t", "unit_price": 1}
            assert (await c.post(PRODUCTS, json=small, headers=admin)).status_code == 201
    assert await count(db, "SELECT count(*) FROM products WHERE sku LIKE 'BIG%'") == 0


async def test_no_internals_in_auth_errors(client: httpx.AsyncClient) -> None:
    r = await client.get(PRODUCTS, headers={"Authorization": "Bearer sr_abcdefabcdef_x' OR 1=1 --"})
    assert_problem(r, 401)
    assert "SELECT" not in r.text


@pytest.mark.parametrize(
    ("content_type", "body", "status", "error_type"),
    [
        ("application/json; charset=utf-8", b'{"sku": "CT-1", "quantity": 2}', 201, None),
        ("application/vnd.stockroom+json", b'{"sku": "CT-1", "quantity": 2}', 201, None),
        ("application/json", b'{"sku": "CT-1", "quantity": 2', 422, "json_invalid"),
        ("application/json", b'{"sku": "CT-1", "quantity": "2"}', 422, "int_type"),
        ("application/json", b"", 422, "missing"),
        ("text/plain", b'{"sku": "CT-1", "quantity": 2}', 422, None),
        (None, b'{"sku": "CT-1", "quantity": 2}', 422, None),
    ],
)
async def test_mutation_bodies_are_read_as_fastapi_reads_them(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    content_type: str | None,
    body: bytes,
    status: int,
    error_type: str | None,
) -> None:
    """Restock's body is validated without FastAPI's request handler on the happy path
    (``MutationRoute._direct_endpoint``); every content type and error still gets FastAPI's
    answer."""
    created = await client.post(
        PRODUCTS, json={"sku": "CT-1", "title": "t", "unit_price": "1.00"}, headers=admin
    )
    assert created.status_code == 201, created.text
    headers = {**admin, "Content-Type": content_type} if content_type else admin
    r = await client.post("/api/v1/inventory/restock", content=body, headers=headers)
    if status == 201:
        assert r.status_code == 201, r.text
        assert r.json()["stock"]["quantity"] == 2
        return
    problem = assert_problem(r, 422)
    if error_type is not None:
        assert problem["errors"][0]["type"] == error_type, problem
