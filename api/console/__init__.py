"""The ops console (SPEC §6): server-rendered pages for the people who run the service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from api.console.routes import router

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """The console's pages at ``/console`` and its two static files."""
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(router)
