"""PostgreSQL URL forms, without importing SQLAlchemy (the CLI stays quick to start)."""

from __future__ import annotations

_SCHEMES = ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql://", "postgres://")


def _rest(url: str) -> str:
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            return url[len(scheme) :]
    raise ValueError("not a PostgreSQL URL")


def driver_url(url: str) -> str:
    """The plain ``postgresql://`` form that asyncpg and libpq accept."""
    return "postgresql://" + _rest(url)


def sqlalchemy_url(url: str) -> str:
    """The ``postgresql+asyncpg://`` form for SQLAlchemy."""
    return "postgresql+asyncpg://" + _rest(url)
