"""Migrations: idempotent, and the models and the migrations describe the same schema."""

from __future__ import annotations

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db.migrate import upgrade_async
from shared.db.models import Base
from shared.db.urls import sqlalchemy_url
from tests.conftest import Env


async def test_migrate_twice_is_a_no_op(env: Env) -> None:
    await upgrade_async(env.database_url)
    conn = await asyncpg.connect(env.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM locations WHERE code = 'MAIN'") == 1
        assert await conn.fetchval("SELECT version_num FROM alembic_version") is not None
    finally:
        await conn.close()


async def test_models_match_migrations(env: Env) -> None:
    engine = create_async_engine(sqlalchemy_url(env.database_url))

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    # trigram indexes are created by the migration only where pg_trgm exists
    differences = [d for d in differences if "trgm" not in repr(d)]
    assert differences == []
