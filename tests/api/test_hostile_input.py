"""No input yields a 5xx (SPEC §4 Errors): text PostgreSQL cannot store, tampered cursors,
ETags and dates out of range are refused with 422 before they reach SQL, and a data error
PostgreSQL raises all the same is a 422, logged."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from tests.conftest import Env
from tests.inventory.helpers import (
    LOCATIONS,
    MOVEMENTS,
    PRODUCTS,
    RESTOCK,
    error_locs,
    make_product,
    problem,
    restock,
)

JSON = {"Content-Type": "application/json"}
NUL = "\\u0000"  # as a JSON escape, written raw into the body
LONE_HIGH = "\\ud800"
LONE_LOW = "\\udc00"
YEAR_ONE_EAST = "0001-01-01T00:00:00+20:27"  # year 0 in UTC: no datetime, no timestamptz


def raw_json(template: str, text: str) -> bytes:
    """A JSON body whose string holds ``text`` as written (escapes included)."""
    return template.replace("TEXT", text).encode()


def tampered(cursor: str, replace: Any) -> str:
    """``cursor`` with its last value replaced, re-encoded as the API encodes cursors."""
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    data[-1] = replace
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def surrogate_cursor(cursor: str) -> str:
    """``cursor`` whose last value is a lone surrogate (JSON's ``\\udc00`` escape)."""
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw = json.dumps([*data[:-1], "SURROGATE"], separators=(",", ":")).replace(
        '"SURROGATE"', '"A\\udc00"'
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("text", [NUL, LONE_HIGH, LONE_LOW, f"ok{LONE_HIGH}x", f"a{NUL}b"])
async def test_unstorable_text_in_any_body_field_is_422(
    client: httpx.AsyncClient, admin: dict[str, str], text: str
) -> None:
    await make_product(client, admin, "SAFE-1")
    headers = {**admin, **JSON}
    bodies = [
        (PRODUCTS, '{"sku":"NUL-1","title":"TEXT","unit_price":"1.00"}'),
        (PRODUCTS, '{"sku":"NUL-2","title":"t","unit_price":"1.00","description":"TEXT"}'),
        (PRODUCTS, '{"sku":"NUL-3","title":"t","unit_price":"1.00","category":"TEXT"}'),
        (LOCATIONS, '{"code":"X1","name":"TEXT"}'),
        # the restock is served by its lane, before the framework: guarded all the same
        (RESTOCK, '{"sku":"SAFE-1","quantity":1,"reference":"TEXT"}'),
        (RESTOCK, '{"sku":"SAFE-1","quantity":1,"note":"TEXT"}'),
        ("/api/v1/reports", '{"kind":"low_stock","format":"csv","params":{"category":"TEXT"}}'),
    ]
    for path, template in bodies:
        r = await client.post(path, content=raw_json(template, text), headers=headers)
        body = problem(r, 422, "validation-error")
        assert error_locs(body) == [("body",)], (path, body)
    r = await client.patch(
        f"{PRODUCTS}/SAFE-1", content=raw_json('{"title":"TEXT"}', text), headers=headers
    )
    problem(r, 422)
    stock = await client.get("/api/v1/inventory/SAFE-1", headers=admin)
    assert stock.json()["on_hand"] == 0


async def test_text_that_only_looks_unstorable_is_stored(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    headers = {**admin, **JSON}
    # an escaped backslash then "u0000"; a surrogate pair (one emoji); both storable
    text = "a\\\\u0000 \\ud83d\\ude00"
    body = raw_json('{"sku":"OK-1","title":"TEXT","unit_price":"1.00"}', text)
    r = await client.post(PRODUCTS, content=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "a\\u0000 \U0001f600"


async def test_unstorable_text_in_a_body_sent_in_pieces_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    # the escape straddles two chunks of the body
    pieces = [b'{"sku":"NUL-9","title":"ab\\ud8', b'00","unit_price":"1.00"}']

    async def stream() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    r = await client.post(PRODUCTS, content=stream(), headers={**admin, **JSON})
    problem(r, 422)


async def test_unstorable_text_in_a_path_or_query_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for url in [
        f"{PRODUCTS}?q=%00",
        f"{PRODUCTS}?category=a%00b",
        f"{PRODUCTS}?q=%ED%A0%80",  # an encoded lone surrogate: not UTF-8
        f"{MOVEMENTS}?sku=%00",
        "/api/v1/audit?action=%00",
        "/api/v1/jobs?kind=%00",
        f"{PRODUCTS}/AB%00C",
        f"{PRODUCTS}/AB%ED%A0%80",  # not UTF-8 (a server decodes it to U+FFFD)
        f"{PRODUCTS}/AB%C3%28",
        "/api/v1/inventory/AB%00C",
    ]:
        r = await client.get(url, headers=admin)
        body = problem(r, 422, "validation-error")
        assert error_locs(body)[0][0] in ("query", "path"), url
    r = await client.delete(f"{PRODUCTS}/AB%00C", headers=admin)
    problem(r, 422)


async def test_tampered_cursors_are_422(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for n in range(3):
        await make_product(client, admin, f"CUR-{n}")
        await restock(client, admin, f"CUR-{n}", 1)
    products = (await client.get(f"{PRODUCTS}?limit=1", headers=admin)).json()["next_cursor"]
    movements = (await client.get(f"{MOVEMENTS}?limit=1", headers=admin)).json()["next_cursor"]
    jobs = (await client.get("/api/v1/jobs?limit=1", headers=admin)).json()["next_cursor"]
    assert products and movements and jobs
    cases = [
        (PRODUCTS, tampered(products, "A\u0000B")),
        (PRODUCTS, surrogate_cursor(products)),
        (PRODUCTS, tampered(products, "A" * 5000)),
        (MOVEMENTS, tampered(movements, 2**63)),
        (MOVEMENTS, tampered(movements, -(2**63) - 1)),
        (MOVEMENTS, tampered(movements, 1.5)),
        (MOVEMENTS, tampered(movements, True)),
        ("/api/v1/jobs", tampered(jobs, "not-a-uuid")),
    ]
    data = json.loads(base64.urlsafe_b64decode(jobs + "=" * (-len(jobs) % 4)))
    for stamp in (YEAR_ONE_EAST, "2026-01-01T00:00:00", "9999-12-31T23:00:00-05:00"):
        raw = json.dumps([data[0], stamp, data[2]]).encode()
        cases.append(("/api/v1/jobs", base64.urlsafe_b64encode(raw).decode().rstrip("=")))
    for path, cursor in cases:
        r = await client.get(path, params={"cursor": cursor}, headers=admin)
        problem(r, 422, "invalid-cursor")
    # the untampered ones still work
    for path, cursor in [(PRODUCTS, products), (MOVEMENTS, movements), ("/api/v1/jobs", jobs)]:
        r = await client.get(path, params={"cursor": cursor}, headers=admin)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "if_match",
    ['"1.\u00b2"', '"1.' + "9" * 5000 + '"', f'"1.{2**31}"', f'"{2**63}.1"', '"\u0661.1"', "1.1"],
)
async def test_if_match_the_api_could_not_have_issued_is_422(
    client: httpx.AsyncClient, admin: dict[str, str], if_match: str
) -> None:
    await make_product(client, admin, "ETAG-1")
    # the server reads header bytes as latin-1: "²" arrives as itself, U+0661 as its UTF-8 bytes
    try:
        raw = if_match.encode("latin-1")
    except UnicodeEncodeError:
        raw = if_match.encode()
    headers: dict[str, Any] = {**admin, "If-Match": raw}
    r = await client.patch(f"{PRODUCTS}/ETAG-1", json={"title": "x"}, headers=headers)
    problem(r, 422, "invalid-etag")
    r = await client.delete(f"{PRODUCTS}/ETAG-1", headers=headers)
    problem(r, 422, "invalid-etag")
    assert (await client.get(f"{PRODUCTS}/ETAG-1", headers=admin)).json()["version"] == 1


async def test_dates_without_a_utc_equivalent_are_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    late = "9999-12-31T23:00:00-05:00"  # year 10000 in UTC
    for path in (MOVEMENTS, "/api/v1/audit"):
        for name in ("since", "until"):
            for value in (YEAR_ONE_EAST, late):
                r = await client.get(path, params={name: value}, headers=admin)
                body = problem(r, 422, "validation-error")
                assert ("query", name) in error_locs(body), (path, name, value)
    report = {
        "kind": "movements",
        "format": "csv",
        "params": {"since": YEAR_ONE_EAST, "until": "2026-01-01T00:00:00Z"},
    }
    r = await client.post("/api/v1/reports", json=report, headers=admin)
    problem(r, 422, "validation-error")
    # the earliest instant that has one is fine
    ok = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59+00:00"}
    r = await client.get(MOVEMENTS, params=ok, headers=admin)
    assert r.status_code == 200, r.text


@pytest.fixture
async def data_error_client(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with one more route that sends its input to PostgreSQL unchecked, as a
    route missing a check would."""
    app = create_app(env.settings())

    @app.get("/unchecked")
    async def unchecked(value: str, as_int: bool = False) -> dict[str, Any]:
        conn = await asyncpg.connect(env.database_url)
        try:
            if as_int:  # the driver refuses to encode it: a client-side DataError
                return {"value": await conn.fetchval("SELECT $1::int", int(value))}
            return {"value": await conn.fetchval("SELECT $1::text::int", value)}  # 22P02
        finally:
            await conn.close()

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def test_a_data_error_postgresql_raises_is_a_logged_422(
    data_error_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stockroom.api")
    r = await data_error_client.get("/unchecked", params={"value": "12x"})
    body = problem(r, 422, "invalid-data")
    assert "12x" not in r.text and "SELECT" not in r.text
    assert body["errors"]
    r = await data_error_client.get("/unchecked", params={"value": str(2**40), "as_int": "true"})
    problem(r, 422, "invalid-data")
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "stockroom.api"]
    assert any("22P02" in line for line in logged), logged
    assert len([line for line in logged if line.startswith("data error on GET")]) == 2, logged
