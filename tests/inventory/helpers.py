"""Shared helpers for the inventory tests: fixtures' building blocks, a snapshot of everything
an inventory request may write, and the ledger invariant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from shared.db.database import Database

API = "/api/v1"
PRODUCTS = f"{API}/catalog/products"
LOCATIONS = f"{API}/inventory/locations"
RESTOCK = f"{API}/inventory/restock"
BATCH = f"{API}/inventory/restock/batch"
ADJUST = f"{API}/inventory/adjustments"
TRANSFER = f"{API}/inventory/transfers"
MOVEMENTS = f"{API}/inventory/movements"
LOW_STOCK = f"{API}/inventory/low-stock"


def inventory(sku: str) -> str:
    return f"{API}/inventory/{sku}"


async def make_product(
    client: httpx.AsyncClient, headers: dict[str, str], sku: str, **extra: Any
) -> dict[str, Any]:
    body = {"sku": sku, "title": f"Product {sku}", "unit_price": "2.50", **extra}
    r = await client.post(PRODUCTS, json=body, headers=headers)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def make_location(
    client: httpx.AsyncClient, headers: dict[str, str], code: str, name: str | None = None
) -> dict[str, Any]:
    r = await client.post(LOCATIONS, json={"code": code, "name": name}, headers=headers)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def restock(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sku: str,
    quantity: int,
    location_code: str = "MAIN",
) -> dict[str, Any]:
    r = await client.post(
        RESTOCK,
        json={"sku": sku, "quantity": quantity, "location_code": location_code},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything an inventory mutation can write."""

    levels: dict[tuple[str, str], int]
    movements: int
    jobs: int
    audit_jobs: int
    locations: int
    idempotency_keys: int


async def snapshot(db: Database) -> Snapshot:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.sku, l.code, s.quantity FROM stock_levels s"
            " JOIN products p ON p.id = s.product_id JOIN locations l ON l.id = s.location_id"
        )
        counts = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM movements) AS movements,
                   (SELECT count(*) FROM jobs) AS jobs,
                   (SELECT count(*) FROM jobs WHERE kind = 'audit') AS audit_jobs,
                   (SELECT count(*) FROM locations) AS locations,
                   (SELECT count(*) FROM idempotency_keys) AS idempotency_keys
            """
        )
    return Snapshot(
        levels={(r["sku"], r["code"]): int(r["quantity"]) for r in rows},
        movements=int(counts["movements"]),
        jobs=int(counts["jobs"]),
        audit_jobs=int(counts["audit_jobs"]),
        locations=int(counts["locations"]),
        idempotency_keys=int(counts["idempotency_keys"]),
    )


async def levels(db: Database) -> dict[tuple[str, str], int]:
    """Non-zero stock levels by ``(sku, location_code)``."""
    return {k: v for k, v in (await snapshot(db)).levels.items() if v != 0}


async def assert_ledger_consistent(db: Database) -> None:
    """Every level equals the sum of its movements (and every ledger sum has its level); no
    level is negative."""
    async with db.pool.acquire() as conn:
        mismatches = await conn.fetch(
            """
            SELECT coalesce(s.product_id, m.product_id) AS product_id,
                   coalesce(s.location_id, m.location_id) AS location_id,
                   s.quantity, m.total
            FROM stock_levels s
            FULL JOIN (
                SELECT product_id, location_id, sum(delta) AS total
                FROM movements GROUP BY product_id, location_id
            ) m ON m.product_id = s.product_id AND m.location_id = s.location_id
            WHERE s.quantity IS DISTINCT FROM m.total AND NOT (s.quantity = 0 AND m.total IS NULL)
            """
        )
        negative = await conn.fetchval("SELECT count(*) FROM stock_levels WHERE quantity < 0")
    assert [dict(r) for r in mismatches] == []
    assert negative == 0


def problem(r: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    if slug is not None:
        assert body["type"].endswith(f"/{slug}"), body
    return body


def error_locs(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in body.get("errors", [])]
