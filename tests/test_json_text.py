"""``shared.db.json_text`` renders JSON in SQL byte for byte as the Pydantic models do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.db import json_text
from shared.db.database import Database


class Inner(BaseModel):
    id: uuid.UUID
    at: datetime


class Outer(BaseModel):
    name: str | None
    count: int | None
    kind: str
    inner: Inner


SQL = "SELECT " + json_text.obj(
    ("name", json_text.string("$1::text")),
    ("count", json_text.number("$2::bigint")),
    ("kind", json_text.constant('it\'s "fixed" é')),
    (
        "inner",
        json_text.obj(("id", json_text.uuid("$3::uuid")), ("at", json_text.timestamp("$4"))),
    ),
)

# text PostgreSQL can hold (no NUL), with the characters JSON escapes and some it need not
texts = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(['"', "\\", "\n\t\r\b\f", "\x01\x1f\x7f", "\u2028\u2029", "é😀", "</'"])
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no fraction: none printed
        datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),  # trailing zeros kept
        datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC).astimezone(UTC) + timedelta(hours=23),
    ],
)
async def test_timestamps_render_as_pydantic_does(db: Database, moment: datetime) -> None:
    await check(db, None, None, uuid.uuid4(), moment)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.none() | texts, count=st.none() | st.integers(-(2**63), 2**63 - 1), at=moments)
async def test_objects_render_as_pydantic_does(
    db: Database, name: str | None, count: int | None, at: datetime
) -> None:
    await check(db, name, count, uuid.uuid4(), at)


async def check(
    db: Database, name: str | None, count: int | None, id_: uuid.UUID, at: datetime
) -> None:
    async with db.pool.acquire() as conn:
        rendered = await conn.fetchval(SQL, name, count, id_, at)
    model = Outer(name=name, count=count, kind='it\'s "fixed" é', inner=Inner(id=id_, at=at))
    assert rendered == model.model_dump_json()
