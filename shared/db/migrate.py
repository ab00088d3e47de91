"""Apply Alembic migrations programmatically (``stockroom migrate``); safe to run repeatedly
and from several replicas at once (the environment holds an advisory lock)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db.urls import driver_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", driver_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """Run from inside an event loop (tests, ``stockroom dev``): Alembic's env uses
    ``asyncio.run`` so it gets a thread of its own."""
    await asyncio.to_thread(upgrade, database_url, revision)
