"""Catalog: every SPEC rule, with 'nothing written' checked on each rejection."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from shared.db.database import Database
from tests.conftest import count

PRODUCTS = "/api/v1/catalog/products"


def product(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"sku": "WIDGET-1", "title": "Widget", "unit_price": "12.50"}
    body.update(overrides)
    return body


async def nothing_written(db: Database) -> None:
    assert await count(db, "SELECT count(*) FROM products") == 0
    assert await count(db, "SELECT count(*) FROM jobs") == 0


async def test_create_returns_product_location_and_etag(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    r = await client.post(
        PRODUCTS,
        json=product(sku="  ab-1 ".upper(), category="tools", reorder_point=5, description="d"),
        headers=admin,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sku"] == "AB-1"
    assert body["unit_price"] == "12.50"
    assert body["on_hand"] == 0
    assert body["version"] == 1
    assert body["category"] == "tools" and body["reorder_point"] == 5
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")
    assert set(body) == {
        "id",
        "sku",
        "title",
        "unit_price",
        "category",
        "reorder_point",
        "description",
        "on_hand",
        "created_at",
        "updated_at",
        "version",
    }
    assert r.headers["location"] == f"{PRODUCTS}/AB-1"
    assert r.headers["etag"] == f'"{body["id"]}.1"'
    # one audit event in the outbox, in the same transaction
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'audit'") == 1


@pytest.mark.parametrize(
    ("price", "expected"),
    [("12.5", "12.50"), (12.5, "12.50"), (3, "3.00"), ("0.01", "0.01"), ("99999.99", "99999.99")],
)
async def test_unit_price_accepts_numbers_and_decimal_strings(
    client: httpx.AsyncClient, admin: dict[str, str], price: Any, expected: str
) -> None:
    r = await client.post(PRODUCTS, json=product(unit_price=price), headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["unit_price"] == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sku", "AB"),  # too short
        ("sku", "A" * 33),  # too long
        ("sku", "ab-1"),  # lower case
        ("sku", "-AB1"),
        ("sku", "AB1-"),
        ("sku", "AB_1"),
        ("sku", "AB 1"),
        ("sku", 12345),
        ("sku", None),
        ("title", ""),
        ("title", "   "),
        ("title", "x" * 201),
        ("title", 5),
        ("unit_price", 0),
        ("unit_price", "0.00"),
        ("unit_price", -1),
        ("unit_price", "12.345"),
        ("unit_price", 1.005),
        ("unit_price", True),
        ("unit_price", "abc"),
        ("unit_price", "NaN"),
        ("unit_price", "Infinity"),
        ("unit_price", None),
        ("unit_price", "1" * 11),
        ("reorder_point", -1),
        ("reorder_point", "5"),
        ("reorder_point", 1.5),
        ("reorder_point", 2.0),
        ("reorder_point", True),
        ("category", "c" * 101),
        ("surprise", "field"),
    ],
)
async def test_bad_product_is_rejected_and_nothing_written(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database, field: str, value: Any
) -> None:
    r = await client.post(PRODUCTS, json=product(**{field: value}), headers=admin)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 422
    assert any(field in err["loc"] for err in problem["errors"]), problem
    await nothing_written(db)


@pytest.mark.parametrize("missing", ["sku", "title", "unit_price"])
async def test_required_fields(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database, missing: str
) -> None:
    body = product()
    del body[missing]
    r = await client.post(PRODUCTS, json=body, headers=admin)
    assert r.status_code == 422
    await nothing_written(db)


async def test_body_must_be_a_json_object(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    for content in (b"{not json", b"[1,2]", b"null"):
        r = await client.post(
            PRODUCTS, content=content, headers={**admin, "Content-Type": "application/json"}
        )
        assert r.status_code == 422, content
    await nothing_written(db)


async def test_sku_boundaries(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for sku in ("ABC", "A" * 32, "A-B", "0-9"):
        r = await client.post(PRODUCTS, json=product(sku=sku), headers=admin)
        assert r.status_code == 201, (sku, r.text)
    r = await client.post(PRODUCTS, json=product(sku="T", title="x" * 200), headers=admin)
    assert r.status_code == 422


async def test_duplicate_sku_conflicts(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    assert (await client.post(PRODUCTS, json=product(), headers=admin)).status_code == 201
    r = await client.post(PRODUCTS, json=product(sku=" WIDGET-1 ", title="Other"), headers=admin)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/duplicate-sku")
    assert await count(db, "SELECT count(*) FROM products") == 1
    assert await count(db, "SELECT count(*) FROM jobs") == 1


async def test_concurrent_duplicate_creates_one(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    results = await asyncio.gather(
        *(client.post(PRODUCTS, json=product(title=f"t{i}"), headers=admin) for i in range(10))
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 9
    assert await count(db, "SELECT count(*) FROM products") == 1
    assert await count(db, "SELECT count(*) FROM jobs") == 1


async def test_get_product(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = (await client.post(PRODUCTS, json=product(), headers=admin)).json()
    r = await client.get(f"{PRODUCTS}/WIDGET-1", headers=admin)
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == f'"{created["id"]}.1"'
    r = await client.get(f"{PRODUCTS}/NOPE-1", headers=admin)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_patch_is_partial_and_bumps_version(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    created = (await client.post(PRODUCTS, json=product(category="a"), headers=admin)).json()
    r = await client.patch(
        f"{PRODUCTS}/WIDGET-1", json={"unit_price": 7, "category": None}, headers=admin
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unit_price"] == "7.00"
    assert body["category"] is None
    assert body["title"] == "Widget"
    assert body["version"] == 2
    assert body["updated_at"] > created["updated_at"]
    assert r.headers["etag"] == f'"{created["id"]}.2"'
    assert (
        await count(db, "SELECT count(*) FROM jobs WHERE payload->>'action' = 'product.updated'")
        == 1
    )


@pytest.mark.parametrize(
    "patch",
    [
        {},
        {"title": None},
        {"unit_price": None},
        {"reorder_point": None},
        {"sku": "OTHER-1"},
        {"title": ""},
        {"unit_price": "1.001"},
        {"reorder_point": -3},
        {"reorder_point": True},
        {"bogus": 1},
    ],
)
async def test_bad_patch_changes_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database, patch: dict[str, Any]
) -> None:
    before = (await client.post(PRODUCTS, json=product(), headers=admin)).json()
    r = await client.patch(f"{PRODUCTS}/WIDGET-1", json=patch, headers=admin)
    assert r.status_code == 422, r.text
    after = (await client.get(f"{PRODUCTS}/WIDGET-1", headers=admin)).json()
    assert after == before
    assert await count(db, "SELECT count(*) FROM jobs") == 1


async def test_patch_with_if_match(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    created = await client.post(PRODUCTS, json=product(), headers=admin)
    etag = created.headers["etag"]
    r = await client.patch(
        f"{PRODUCTS}/WIDGET-1", json={"title": "New"}, headers={**admin, "If-Match": etag}
    )
    assert r.status_code == 200
    stale = await client.patch(
        f"{PRODUCTS}/WIDGET-1", json={"title": "Stale"}, headers={**admin, "If-Match": etag}
    )
    assert stale.status_code == 412
    assert stale.json()["type"].endswith("/precondition-failed")
    r = await client.patch(
        f"{PRODUCTS}/WIDGET-1", json={"title": "x"}, headers={**admin, "If-Match": 'W/"999.2"'}
    )
    assert r.status_code == 412
    for bad in ('"garbage"', "2"):  # not an ETag this API issues (SPEC §4 Errors): 422
        r = await client.patch(
            f"{PRODUCTS}/WIDGET-1", json={"title": "x"}, headers={**admin, "If-Match": bad}
        )
        assert r.status_code == 422, bad
    current = (await client.get(f"{PRODUCTS}/WIDGET-1", headers=admin)).json()
    assert current["title"] == "New" and current["version"] == 2
    r = await client.patch(
        f"{PRODUCTS}/WIDGET-1", json={"title": "Star"}, headers={**admin, "If-Match": "*"}
    )
    assert r.status_code == 200
    r = await client.patch(f"{PRODUCTS}/NOPE-1", json={"title": "x"}, headers=admin)
    assert r.status_code == 404


async def test_etag_race_exactly_one_wins(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    etag = (await client.post(PRODUCTS, json=product(), headers=admin)).headers["etag"]
    results = await asyncio.gather(
        *(
            client.patch(
                f"{PRODUCTS}/WIDGET-1",
                json={"title": f"writer {i}"},
                headers={**admin, "If-Match": etag},
            )
            for i in range(12)
        )
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [412] * 11
    final = (await client.get(f"{PRODUCTS}/WIDGET-1", headers=admin)).json()
    winner = next(r for r in results if r.status_code == 200).json()
    assert final["title"] == winner["title"] and final["version"] == 2
    assert (
        await count(db, "SELECT count(*) FROM jobs WHERE payload->>'action' = 'product.updated'")
        == 1
    )


async def test_delete_archives(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await client.post(PRODUCTS, json=product(), headers=admin)
    await client.post(PRODUCTS, json=product(sku="KEEP-1"), headers=admin)
    r = await client.delete(f"{PRODUCTS}/WIDGET-1", headers=admin)
    assert r.status_code == 204 and r.content == b""
    assert (await client.get(f"{PRODUCTS}/WIDGET-1", headers=admin)).status_code == 404
    listed = (await client.get(PRODUCTS, headers=admin)).json()
    assert [p["sku"] for p in listed["items"]] == ["KEEP-1"]
    assert (await client.delete(f"{PRODUCTS}/WIDGET-1", headers=admin)).status_code == 404
    assert (
        await client.patch(f"{PRODUCTS}/WIDGET-1", json={"title": "x"}, headers=admin)
    ).status_code == 404
    # history is kept: the row is archived, not deleted; the SKU stays taken
    assert await count(db, "SELECT count(*) FROM products WHERE archived_at IS NOT NULL") == 1
    r = await client.post(PRODUCTS, json=product(), headers=admin)
    assert r.status_code == 409
    assert (
        await count(db, "SELECT count(*) FROM jobs WHERE payload->>'action' = 'product.archived'")
        == 1
    )


async def test_delete_with_stale_if_match(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    etag = (await client.post(PRODUCTS, json=product(), headers=admin)).headers["etag"]
    await client.patch(f"{PRODUCTS}/WIDGET-1", json={"title": "x"}, headers=admin)
    r = await client.delete(f"{PRODUCTS}/WIDGET-1", headers={**admin, "If-Match": etag})
    assert r.status_code == 412
    assert (await client.get(f"{PRODUCTS}/WIDGET-1", headers=admin)).status_code == 200
