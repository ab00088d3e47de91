"""How requests use the connection pool: never two connections at once, none while a body is
still arriving, and bodies no parser can take are a 400, not a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.middleware import BodySizeLimitMiddleware
from shared.db.database import Database
from tests.conftest import Env, count

PRODUCTS = "/api/v1/catalog/products"
RESTOCK = "/api/v1/inventory/restock"


@asynccontextmanager
async def _client(env: Env, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(env.settings(**settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def test_concurrent_reads_never_wait_for_a_second_connection(
    env: Env, admin: dict[str, str]
) -> None:
    """A read authenticates on its own connection: with every connection held by a request
    that waited for a second one, the API would hang for good (it did, with 8 reads on 2)."""
    async with _client(env, db_pool_size=2) as c:
        reads = [c.get(PRODUCTS, headers=admin) for _ in range(8)]
        answers = await asyncio.wait_for(asyncio.gather(*reads), timeout=20)
    assert [r.status_code for r in answers] == [200] * 8


async def test_a_slow_upload_holds_no_connection(
    env: Env, db: Database, admin: dict[str, str]
) -> None:
    """A mutation reads its whole body before it takes a connection: with a pool of one, a
    read is answered while a restock's body is still arriving."""
    created = await _product(env, admin, "SLOW-1")
    assert created == 201
    rest_of_body = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"sku": "SLOW-1", '
        await rest_of_body.wait()
        yield b'"quantity": 3}'

    async with _client(env, db_pool_size=1) as c:
        upload = asyncio.create_task(
            c.post(
                RESTOCK,
                content=trickle(),
                headers={**admin, "Content-Type": "application/json", "Idempotency-Key": "s1"},
            )
        )
        read = await asyncio.wait_for(c.get(PRODUCTS, headers=admin), timeout=20)
        assert read.status_code == 200
        assert not upload.done()
        rest_of_body.set()
        restocked = await asyncio.wait_for(upload, timeout=20)
    assert restocked.status_code == 201, restocked.text
    assert await count(db, "SELECT count(*) FROM movements") == 1


async def _product(env: Env, admin: dict[str, str], sku: str) -> int:
    async with _client(env) as c:
        r = await c.post(
            PRODUCTS, json={"sku": sku, "title": "t", "unit_price": "1.00"}, headers=admin
        )
    return r.status_code


async def test_a_body_nested_too_deep_to_parse_is_a_400(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for extra in ({}, {"Idempotency-Key": "deep"}):
        r = await client.post(
            RESTOCK, content=deep, headers={**admin, **extra, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
    assert await count(db, "SELECT count(*) FROM movements") == 0


def test_only_posts_document_an_idempotency_key(app: Any) -> None:
    documented = {}
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", [])]
            documented[(method.upper(), path)] = names.count("Idempotency-Key")
    posts = {route: n for route, n in documented.items() if route[0] == "POST"}
    others = {route: n for route, n in documented.items() if route[0] != "POST"}
    assert posts and all(n == 1 for n in posts.values()), posts
    assert not any(others.values()), others


async def test_the_apis_connections_carry_its_limits(app: Any) -> None:
    """No statement of a request runs past 30 s, no transaction stays open past 60 s, and the
    connections say whose they are in pg_stat_activity."""
    async with app.state.stockroom.db.acquire() as conn:
        settings = await conn.fetchrow(
            "SELECT current_setting('statement_timeout') AS statement,"
            " current_setting('idle_in_transaction_session_timeout') AS idle,"
            " current_setting('application_name') AS name"
        )
    assert dict(settings) == {"statement": "30s", "idle": "1min", "name": "stockroom-api"}


async def test_a_path_named_larger_takes_a_larger_body() -> None:
    """An upload route (a CSV import, say) gets its own limit; every other path keeps the
    general one, by Content-Length or as the body streams in."""

    async def size(scope: Scope, receive: Receive, send: Send) -> None:
        received, more = 0, True
        while more:
            message = await receive()
            received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await Response(str(received))(scope, receive, send)

    app = BodySizeLimitMiddleware(size, max_bytes=10, larger={"/upload": 100})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/upload", content=b"x" * 50)).text == "50"
        assert (await c.post("/upload", content=b"x" * 101)).status_code == 413
        assert (await c.post("/other", content=b"x" * 50)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"x" * 10

        assert (await c.post("/other", content=chunks())).status_code == 413
        assert (await c.post("/upload", content=chunks())).text == "50"
