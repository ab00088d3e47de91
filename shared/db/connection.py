"""The connection type services take (a plain asyncpg connection or one lent by the pool),
and how every connection is set up."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from shared.db.urls import driver_url

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection


SERVER_SETTINGS = {"timezone": "UTC", "application_name": "stockroom"}


async def configure(conn: asyncpg.Connection) -> None:
    """JSON and JSONB as Python values, on every connection."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def connect(url: str) -> Connection:
    """One configured connection (the CLI; processes use ``Database``'s pool)."""
    conn: Connection = await asyncpg.connect(driver_url(url), server_settings=SERVER_SETTINGS)
    await configure(conn)  # type: ignore[arg-type]
    return conn
