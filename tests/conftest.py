"""Test harness: real PostgreSQL and Redis (see ``tests.servers``), one freshly migrated
database and one queue name per test run, tables emptied between tests, the real app served
in-process over ASGI, and helpers to start real worker processes."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from api.app import create_app
from shared.auth import service as keys_service
from shared.db.database import Database
from shared.db.migrate import upgrade_async
from shared.db.urls import driver_url
from shared.embedded import free_port
from shared.settings import Settings, load_settings
from tests.servers import PrivateRedis, provide_servers

pytest_plugins = ["tests.worker_support"]

TABLES = (
    "api_keys",
    "products",
    "stock_levels",
    "movements",
    "idempotency_keys",
    "jobs",
    "audit_entries",
    "webhook_deliveries",
    "reports",
    "report_chunks",
)


@dataclass(frozen=True, slots=True)
class Env:
    database_url: str
    redis_url: str
    queue_name: str

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "queue_name": self.queue_name,
            "env": "development",
        }
        values.update(overrides)
        return load_settings(**values)

    def process_env(self, **extra: str) -> dict[str, str]:
        """Environment for a child process (``stockroom worker``, ``stockroom api``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        env.update(
            STOCKROOM_DATABASE_URL=self.database_url,
            STOCKROOM_REDIS_URL=self.redis_url,
            STOCKROOM_QUEUE_NAME=self.queue_name,
        )
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        yield provide_servers(stack)


@pytest.fixture(scope="session")
async def env(servers: tuple[str, str]) -> AsyncIterator[Env]:
    admin_url, redis_url = servers
    run_id = uuid.uuid4().hex[:10]
    db_name = f"stockroom_test_{run_id}"
    admin = await asyncpg.connect(driver_url(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        await admin.close()
    database_url = make_url(driver_url(admin_url)).set(database=db_name)
    url = database_url.render_as_string(hide_password=False)
    await upgrade_async(url)
    yield Env(database_url=url, redis_url=redis_url, queue_name=f"stockroom-test-{run_id}")
    admin = await asyncpg.connect(driver_url(admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    finally:
        await admin.close()
    redis = Redis.from_url(redis_url)
    try:
        async for key in redis.scan_iter(match=f"*stockroom-test-{run_id}*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()


@pytest.fixture(scope="session")
async def db(env: Env) -> AsyncIterator[Database]:
    database = await Database.connect(env.database_url, pool_size=5)
    yield database
    await database.close()


@pytest.fixture(autouse=True)
async def _clean_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "env" not in request.fixturenames:
        return
    environment: Env = request.getfixturevalue("env")
    conn = await asyncpg.connect(environment.database_url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        await conn.execute("DELETE FROM locations WHERE code <> 'MAIN'")
    finally:
        await conn.close()
    # and the queue: a job one test left deferred must not keep the next test's burst
    # worker waiting, or run in it
    redis = Redis.from_url(environment.redis_url)
    try:
        await redis.delete(environment.queue_name)
        async for key in redis.scan_iter(match=f"arq:*{environment.queue_name}*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()


@pytest.fixture(scope="session")
async def app(env: Env) -> AsyncIterator[Any]:
    application = create_app(env.settings())
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockroom.test") as c:
        yield c


KeyFactory = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def make_key(db: Database) -> KeyFactory:
    """``await make_key("catalog:read", ...)`` → Authorization headers for a fresh key."""

    async def make(*scopes: str, name: str = "test") -> dict[str, str]:
        async with db.pool.acquire() as conn:
            created = await keys_service.create_key(conn, name, sorted(scopes))
        return {"Authorization": f"Bearer {created.key}"}

    return make


@pytest.fixture
async def admin(make_key: KeyFactory) -> dict[str, str]:
    return await make_key("admin", name="admin")


async def count(db: Database, sql: str, *args: Any) -> int:
    async with db.pool.acquire() as conn:
        value = await conn.fetchval(sql, *args)
    return int(value)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, on a free port: one a test may stop and start."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for the outage test (Debian package redis-server)")
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()
