"""Inventory: restock and the read side (levels, ledger, low stock, locations), shapes as in
SPEC."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from shared.db.database import Database
from tests.conftest import count
from tests.inventory.helpers import (
    ADJUST,
    LOCATIONS,
    LOW_STOCK,
    MOVEMENTS,
    PRODUCTS,
    RESTOCK,
    assert_ledger_consistent,
    inventory,
    make_location,
    make_product,
    problem,
    restock,
)

LEDGER_SIZE = 30
MOVEMENT_FIELDS = {"id", "sku", "location_code", "delta", "reason", "reference", "created_at"}
STOCK_FIELDS = {"sku", "location_code", "quantity", "updated_at"}


def utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0), text
    return parsed


async def test_restock_response_shape(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await make_product(client, admin, "WID-1")
    r = await client.post(
        RESTOCK,
        json={"sku": "WID-1", "quantity": 7, "reference": "PO-1", "note": "first"},
        headers={**admin, "X-Request-ID": "dock-1"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"movement", "stock", "audit_job"}
    movement, stock, job = body["movement"], body["stock"], body["audit_job"]
    assert set(movement) == MOVEMENT_FIELDS
    assert isinstance(movement["id"], int)
    assert movement["sku"] == "WID-1" and movement["location_code"] == "MAIN"
    assert movement["delta"] == 7 and movement["reason"] == "restock"
    assert movement["reference"] == "PO-1"
    utc(movement["created_at"])
    assert set(stock) == STOCK_FIELDS
    assert stock == {
        "sku": "WID-1",
        "location_code": "MAIN",
        "quantity": 7,
        "updated_at": stock["updated_at"],
    }
    utc(stock["updated_at"])
    assert set(job) == {"id", "status_url"}
    assert job["status_url"] == f"/api/v1/jobs/{uuid.UUID(job['id'])}"
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT kind, request_id, payload FROM jobs WHERE id = $1", uuid.UUID(job["id"])
        )
        stored = await conn.fetchrow(
            "SELECT note, request_id, actor_key_id FROM movements WHERE id = $1", movement["id"]
        )
    assert row["kind"] == "audit" and row["request_id"] == "dock-1"
    assert row["payload"]["action"] == "inventory.restocked"
    assert row["payload"]["skus"] == ["WID-1"]
    assert row["payload"]["payload"]["movement_id"] == movement["id"]
    assert stored["note"] == "first" and stored["request_id"] == "dock-1"
    assert stored["actor_key_id"] is not None
    # product.created + restock
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'audit'") == 2

    # the level after each restock; a location other than MAIN; whitespace around codes
    await make_location(client, admin, "DOCK")
    second = await client.post(RESTOCK, json={"sku": "WID-1", "quantity": 3}, headers=admin)
    assert second.json()["stock"]["quantity"] == 10
    assert second.json()["movement"]["reference"] is None
    assert second.json()["movement"]["id"] > movement["id"]
    dock = await client.post(
        RESTOCK,
        json={"sku": " WID-1 ", "quantity": 4, "location_code": " DOCK "},
        headers=admin,
    )
    assert dock.status_code == 201, dock.text
    assert dock.json()["stock"]["quantity"] == 4
    assert dock.json()["stock"]["location_code"] == "DOCK"
    await assert_ledger_consistent(db)


async def test_inventory_view(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await make_product(client, admin, "WID-1")
    r = await client.get(inventory("WID-1"), headers=admin)
    assert r.status_code == 200
    assert r.json() == {"sku": "WID-1", "on_hand": 0, "levels": []}
    await make_location(client, admin, "B-DOCK")
    await make_location(client, admin, "Z-YARD")
    await restock(client, admin, "WID-1", 5, "Z-YARD")
    await restock(client, admin, "WID-1", 2)
    await restock(client, admin, "WID-1", 3, "B-DOCK")
    last = await restock(client, admin, "WID-1", 1)
    view = (await client.get(inventory("WID-1"), headers=admin)).json()
    assert set(view) == {"sku", "on_hand", "levels"}
    assert view["on_hand"] == 11
    assert [(lv["location_code"], lv["quantity"]) for lv in view["levels"]] == [
        ("B-DOCK", 3),
        ("MAIN", 3),
        ("Z-YARD", 5),
    ]
    assert all(set(lv) == {"location_code", "quantity", "updated_at"} for lv in view["levels"])
    main = next(lv for lv in view["levels"] if lv["location_code"] == "MAIN")
    assert utc(main["updated_at"]) == utc(last["stock"]["updated_at"])
    # the catalog shows the same on_hand, in the item and in lists
    product = (await client.get(f"{PRODUCTS}/WID-1", headers=admin)).json()
    assert product["on_hand"] == 11
    listed = (await client.get(PRODUCTS, headers=admin)).json()["items"]
    assert [p["on_hand"] for p in listed] == [11]
    # a level taken back to zero stays listed at 0
    r = await client.post(
        ADJUST,
        json={"sku": "WID-1", "location_code": "B-DOCK", "delta": -3, "reason": "count"},
        headers=admin,
    )
    assert r.status_code == 201
    view = (await client.get(inventory("WID-1"), headers=admin)).json()
    assert view["on_hand"] == 8
    assert (await client.get(f"{PRODUCTS}/WID-1", headers=admin)).json()["on_hand"] == 8
    # unknown and archived SKUs are 404
    problem(await client.get(inventory("NOPE-1"), headers=admin), 404)
    assert (await client.delete(f"{PRODUCTS}/WID-1", headers=admin)).status_code == 204
    problem(await client.get(inventory("WID-1"), headers=admin), 404)


async def test_reads_need_inventory_read(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: Any
) -> None:
    await make_product(client, admin, "WID-1")
    writer = await make_key("inventory:write")
    reader = await make_key("inventory:read")
    for path in (inventory("WID-1"), MOVEMENTS, LOW_STOCK, LOCATIONS):
        problem(await client.get(path, headers=writer), 403)
        problem(await client.get(path), 401)
        assert (await client.get(path, headers=reader)).status_code == 200, path


# --- the ledger --------------------------------------------------------------------------------


async def ledger(
    client: httpx.AsyncClient, headers: dict[str, str], limit: int = 100, **params: Any
) -> list[dict[str, Any]]:
    """Every page of ``GET /inventory/movements`` with ``params``."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await client.get(MOVEMENTS, params=query, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert page["items"], "a page with a next_cursor must not be empty"
    raise AssertionError("pagination does not end")


@pytest.fixture
async def busy_ledger(client: httpx.AsyncClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    """30 movements on two SKUs at two locations; returns them in write order."""
    await make_product(client, admin, "AAA-1")
    await make_product(client, admin, "BBB-1")
    await make_location(client, admin, "DOCK")
    written = []
    for i in range(LEDGER_SIZE):
        sku = "AAA-1" if i % 3 else "BBB-1"
        code = "DOCK" if i % 2 else "MAIN"
        written.append((await restock(client, admin, sku, i + 1, code))["movement"])
    return written


async def test_movements_shape_and_order(
    client: httpx.AsyncClient, admin: dict[str, str], busy_ledger: list[dict[str, Any]]
) -> None:
    items = await ledger(client, admin)
    assert items == busy_ledger
    assert all(set(m) == MOVEMENT_FIELDS for m in items)
    first = (await client.get(MOVEMENTS, headers=admin)).json()
    assert len(first["items"]) == 20 and first["next_cursor"]  # default limit


async def test_keyset_pagination_walks_the_ledger_once(
    client: httpx.AsyncClient, admin: dict[str, str], busy_ledger: list[dict[str, Any]]
) -> None:
    for limit in (1, 7, 20, LEDGER_SIZE - 1, LEDGER_SIZE, LEDGER_SIZE + 1, 100):
        items = await ledger(client, admin, limit=limit)
        assert [m["id"] for m in items] == [m["id"] for m in busy_ledger], limit
        assert len({m["id"] for m in items}) == LEDGER_SIZE


async def test_pagination_while_the_ledger_grows(
    client: httpx.AsyncClient, admin: dict[str, str], busy_ledger: list[dict[str, Any]]
) -> None:
    """Rows written while a client pages appear once, at the end; none repeats or is lost."""
    seen: list[int] = []
    r = await client.get(MOVEMENTS, params={"limit": 10}, headers=admin)
    page = r.json()
    seen += [m["id"] for m in page["items"]]
    await restock(client, admin, "AAA-1", 1)
    while page["next_cursor"]:
        await restock(client, admin, "BBB-1", 1)
        r = await client.get(
            MOVEMENTS, params={"limit": 10, "cursor": page["next_cursor"]}, headers=admin
        )
        page = r.json()
        seen += [m["id"] for m in page["items"]]
        if len(seen) > 200:
            break
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert set(seen) >= {m["id"] for m in busy_ledger}


async def test_movement_filters(
    client: httpx.AsyncClient, admin: dict[str, str], busy_ledger: list[dict[str, Any]]
) -> None:
    for params in [
        {"sku": "AAA-1"},
        {"sku": "BBB-1"},
        {"location_code": "DOCK"},
        {"sku": "AAA-1", "location_code": "MAIN"},
        {"sku": "NOPE-1"},
        {"location_code": "NOWHERE"},
    ]:
        expected = [
            m for m in busy_ledger if all(m[field] == value for field, value in params.items())
        ]
        assert await ledger(client, admin, limit=6, **params) == expected, params


async def test_since_until_is_half_open_and_honours_offsets(
    client: httpx.AsyncClient, admin: dict[str, str], busy_ledger: list[dict[str, Any]]
) -> None:
    stamps = sorted({utc(m["created_at"]) for m in busy_ledger})
    assert len(stamps) == LEDGER_SIZE  # one transaction each
    lower, upper = stamps[8], stamps[22]

    def expect(lo: datetime | None, hi: datetime | None) -> list[dict[str, Any]]:
        return [
            m
            for m in busy_ledger
            if (lo is None or utc(m["created_at"]) >= lo)
            and (hi is None or utc(m["created_at"]) < hi)
        ]

    plus2 = timezone(timedelta(hours=2))
    minus5 = timezone(timedelta(hours=-5, minutes=-30))
    for since, until in [
        (lower, upper),
        (lower.astimezone(plus2), upper.astimezone(minus5)),
        (lower, None),
        (None, upper),
        (stamps[0], stamps[0]),  # empty: [t, t)
        (stamps[-1], None),
        (None, stamps[0]),
        (stamps[-1] + timedelta(microseconds=1), None),
    ]:
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since.isoformat()
        if until is not None:
            params["until"] = until.isoformat()
        got = await ledger(client, admin, limit=7, **params)
        assert got == expect(since, until), params
    # the "Z" suffix and a sku filter together
    got = await ledger(
        client,
        admin,
        since=lower.isoformat().replace("+00:00", "Z"),
        until=upper.isoformat().replace("+00:00", "Z"),
        sku="AAA-1",
    )
    assert got == [m for m in expect(lower, upper) if m["sku"] == "AAA-1"]
    assert got


async def test_bad_movement_queries_are_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for params in [
        {"since": "2024-01-01T00:00:00"},  # no offset
        {"until": "2024-01-01T10:00:00"},
        {"since": "yesterday"},
        {"since": "2024-13-01T00:00:00Z"},
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"cursor": "garbage"},
        {"cursor": "!!!"},
    ]:
        r = await client.get(MOVEMENTS, params=params, headers=admin)
        assert r.status_code == 422, params
        problem(r, 422)


async def test_a_cursor_from_another_list_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for i in range(3):
        await make_location(client, admin, f"L{i}")
    cursor = (await client.get(LOCATIONS, params={"limit": 1}, headers=admin)).json()["next_cursor"]
    assert cursor
    problem(await client.get(MOVEMENTS, params={"cursor": cursor}, headers=admin), 422)
    problem(await client.get(LOW_STOCK, params={"cursor": cursor}, headers=admin), 422)


# --- low stock and locations -------------------------------------------------------------------


async def test_low_stock_lists_on_hand_at_or_below_reorder_point(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_location(client, admin, "DOCK")
    await make_product(client, admin, "AT-1", reorder_point=5, category="c1")
    await make_product(client, admin, "ABOVE-1", reorder_point=5)
    await make_product(client, admin, "ZERO-1")  # reorder_point 0, nothing on hand
    await make_product(client, admin, "EMPTY-1", reorder_point=1)
    await make_product(client, admin, "GONE-1", reorder_point=5)
    await make_product(client, admin, "SPLIT-1", reorder_point=5)
    await restock(client, admin, "AT-1", 5)
    await restock(client, admin, "ABOVE-1", 6)
    await restock(client, admin, "SPLIT-1", 3)
    await restock(client, admin, "SPLIT-1", 3, "DOCK")  # 6 in all: above
    assert (await client.delete(f"{PRODUCTS}/GONE-1", headers=admin)).status_code == 204
    r = await client.get(LOW_STOCK, headers=admin)
    assert r.status_code == 200
    page = r.json()
    assert page["next_cursor"] is None
    assert page["items"] == [
        {"sku": sku, "title": f"Product {sku}", "category": category, "on_hand": on_hand,
         "reorder_point": reorder_point}
        for sku, category, on_hand, reorder_point in [
            ("AT-1", "c1", 5, 5),
            ("EMPTY-1", None, 0, 1),
            ("ZERO-1", None, 0, 0),
        ]
    ]  # fmt: skip
    # pages walk the same list once
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(LOW_STOCK, params=params, headers=admin)).json()
        seen += [item["sku"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["AT-1", "EMPTY-1", "ZERO-1"]
    # taking stock out moves a product onto the list
    r = await client.post(
        ADJUST,
        json={"sku": "ABOVE-1", "location_code": "MAIN", "delta": -1, "reason": "damage"},
        headers=admin,
    )
    assert r.status_code == 201
    skus = [item["sku"] for item in (await client.get(LOW_STOCK, headers=admin)).json()["items"]]
    assert skus == ["ABOVE-1", "AT-1", "EMPTY-1", "ZERO-1"]


async def test_locations(client: httpx.AsyncClient, admin: dict[str, str], db: Database) -> None:
    page = (await client.get(LOCATIONS, headers=admin)).json()
    assert [loc["code"] for loc in page["items"]] == ["MAIN"]
    assert page["next_cursor"] is None
    r = await client.post(LOCATIONS, json={"code": "DOCK-2", "name": "Dock two"}, headers=admin)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "code", "name", "created_at"}
    assert body["code"] == "DOCK-2" and body["name"] == "Dock two"
    utc(body["created_at"])
    assert (await client.post(LOCATIONS, json={"code": "A1"}, headers=admin)).json()["name"] is None
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'audit'") == 2
    codes = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(LOCATIONS, params=params, headers=admin)).json()
        codes += [loc["code"] for loc in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert codes == ["A1", "DOCK-2", "MAIN"]
    # a new location is usable at once
    await make_product(client, admin, "WID-1")
    assert (await restock(client, admin, "WID-1", 2, "A1"))["stock"]["location_code"] == "A1"
