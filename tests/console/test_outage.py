"""PostgreSQL down under a signed-in console: every page says so (503, as a page, with
Retry-After) instead of erroring, and works again by itself once PostgreSQL is back. Uses a
private PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from shared.auth import service as keys_service
from shared.db.database import Database
from shared.db.migrate import upgrade_async
from shared.embedded import EmbeddedPostgres, free_port
from tests.conftest import Env
from tests.console.support import signed_in_csrf
from tests.waiting import eventually


async def test_the_console_says_postgresql_is_down_and_recovers(env: Env, tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    await asyncio.to_thread(server.start)
    try:
        await upgrade_async(server.url)
        db = await Database.connect(server.url, pool_size=1)
        try:
            async with db.pool.acquire() as conn:
                key = (await keys_service.create_key(conn, "ops", ["admin"])).key
        finally:
            await db.close()
        app: Any = create_app(env.settings(database_url=server.url))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://stockroom.test"
            ) as client:
                await signed_in_csrf(client, key)
                await asyncio.to_thread(server.stop)
                for path in ("/console", "/console/jobs", "/console/audit"):
                    r = await client.get(path)
                    assert r.status_code == 503, (path, r.status_code)
                    assert "PostgreSQL is unreachable" in r.text
                    assert r.headers["retry-after"] == "5"
                    assert r.headers["content-type"].startswith("text/html")
                fragment = await client.get("/console", headers={"X-Console-Fragment": "1"})
                assert fragment.status_code == 503 and "<html" not in fragment.text
                await asyncio.to_thread(server.start)

                async def back() -> bool:
                    return (await client.get("/console")).status_code == 200

                await eventually(back, timeout=30, what="the console to work again")
    finally:
        await asyncio.to_thread(server.stop)
