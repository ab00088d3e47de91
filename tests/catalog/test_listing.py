"""Listing: keyset pagination walks a list exactly once; category and q filters."""

from __future__ import annotations

import httpx
import pytest

from shared.db.database import Database
from shared.pagination import encode_cursor

PRODUCTS = "/api/v1/catalog/products"


async def seed(db: Database, rows: list[tuple[str, str, str | None]]) -> None:
    async with db.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO products (sku, title, unit_price, category) VALUES ($1, $2, 1, $3)", rows
        )


async def walk(client: httpx.AsyncClient, headers: dict[str, str], query: str) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        url = f"{PRODUCTS}?{query}" + (f"&cursor={cursor}" if cursor else "")
        r = await client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        seen.extend(p["sku"] for p in page["items"])
        cursor = page["next_cursor"]
        pages += 1
        assert pages < 1000
        if cursor is None:
            return seen


async def test_pagination_walks_every_product_exactly_once(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    skus = [f"SKU-{i:04d}" for i in range(103)]
    await seed(db, [(s, f"Item {s}", "c") for s in reversed(skus)])
    assert await walk(client, admin, "limit=7") == skus
    assert await walk(client, admin, "limit=100") == skus
    default = (await client.get(PRODUCTS, headers=admin)).json()
    assert len(default["items"]) == 20 and default["next_cursor"]


async def test_pagination_is_stable_under_inserts(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await seed(db, [(f"SKU-{i:03d}", "x", None) for i in range(0, 40, 2)])
    first = (await client.get(f"{PRODUCTS}?limit=5", headers=admin)).json()
    # rows inserted before the cursor position must not shift later pages
    await seed(db, [("SKU-001", "x", None), ("SKU-003", "x", None)])
    second = (
        await client.get(f"{PRODUCTS}?limit=5&cursor={first['next_cursor']}", headers=admin)
    ).json()
    assert [p["sku"] for p in second["items"]] == [f"SKU-{i:03d}" for i in range(10, 20, 2)]


async def test_category_filter(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await seed(db, [("AAA-1", "a", "tools"), ("BBB-1", "b", "food"), ("CCC-1", "c", "tools")])
    r = await client.get(f"{PRODUCTS}?category=tools", headers=admin)
    assert [p["sku"] for p in r.json()["items"]] == ["AAA-1", "CCC-1"]
    assert await walk(client, admin, "category=tools&limit=1") == ["AAA-1", "CCC-1"]
    r = await client.get(f"{PRODUCTS}?category=none", headers=admin)
    assert r.json() == {"items": [], "next_cursor": None}


async def test_q_matches_sku_and_title_case_insensitively(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await seed(
        db,
        [
            ("BOLT-10", "Hex bolt", None),
            ("NUT-10", "Nut for BOLT", None),
            ("WASH-1", "Washer", None),
            ("PCT-1", "100% cotton", None),
            ("UND-1", "snake_case", None),
            ("UND-2", "snakeXcase", None),
        ],
    )

    async def q(term: str) -> list[str]:
        r = await client.get(PRODUCTS, params={"q": term}, headers=admin)
        assert r.status_code == 200
        return [p["sku"] for p in r.json()["items"]]

    assert await q("bolt") == ["BOLT-10", "NUT-10"]
    assert await q("wash") == ["WASH-1"]
    assert await q("t-1") == ["BOLT-10", "NUT-10", "PCT-1"]
    assert await q("%") == ["PCT-1"]  # literal, not a wildcard
    assert await q("_") == ["UND-1"]  # literal, not a single-character wildcard
    assert await q("e_c") == ["UND-1"]
    assert await walk(client, admin, "q=bolt&limit=1") == ["BOLT-10", "NUT-10"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=1.5",
        "cursor=not-a-cursor",
        "cursor=%%%",
        f"cursor={encode_cursor('jobs', ['x'])}",
        f"cursor={encode_cursor('products', [1])}",
        f"cursor={encode_cursor('products', ['a', 'b'])}",
    ],
)
async def test_bad_list_parameters(
    client: httpx.AsyncClient, admin: dict[str, str], query: str
) -> None:
    r = await client.get(f"{PRODUCTS}?{query}", headers=admin)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
