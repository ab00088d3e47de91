"""``stockroom seed``: realistic demo data, fast.

Products and locations go in with COPY; the ledger is generated inside PostgreSQL in one
set-based statement, and stock levels are its sums, so every level equals its movements.
Seeding is a bulk load, not a stream of API mutations: it writes no audit events."""

from __future__ import annotations

import random
import secrets
import time
from decimal import Decimal
from typing import Any

import asyncpg

from shared.db.urls import driver_url

CATEGORIES = [
    "fasteners",
    "tools",
    "electrical",
    "plumbing",
    "paint",
    "garden",
    "safety",
    "lighting",
    "hardware",
    "adhesives",
]
NOUNS = [
    "bolt",
    "screw",
    "washer",
    "drill bit",
    "cable",
    "pipe",
    "valve",
    "brush",
    "hose",
    "glove",
    "lamp",
    "hinge",
    "glue",
    "tape",
    "switch",
    "socket",
    "nail",
    "anchor",
]
ADJECTIVES = [
    "steel",
    "brass",
    "heavy-duty",
    "compact",
    "galvanised",
    "insulated",
    "stainless",
    "coated",
    "flexible",
    "industrial",
]

_MOVEMENTS_SQL = """
WITH params AS (
    SELECT $1::bigint AS first_product, $2::bigint AS n_products, $3::int[] AS location_ids
)
INSERT INTO movements (product_id, location_id, delta, reason, reference, created_at)
SELECT
    p.first_product + (g % p.n_products),
    p.location_ids[1 + ((g / p.n_products) % cardinality(p.location_ids))],
    -- per (product, location) the ledger alternates a restock and a smaller pick, so every
    -- running sum stays >= 0
    CASE WHEN (g / (p.n_products * cardinality(p.location_ids))) % 2 = 0
         THEN 10 + (hashint4(g::int) & 63)
         ELSE -(1 + (hashint4((g - p.n_products * cardinality(p.location_ids))::int) & 7))
    END,
    CASE WHEN (g / (p.n_products * cardinality(p.location_ids))) % 2 = 0
         THEN 'restock' ELSE 'pick' END,
    'seed',
    now() - interval '90 days' + (g::double precision / $4) * interval '90 days'
FROM params p, generate_series(0, $4 - 1) AS g
"""


async def seed(
    database_url: str, *, products: int, locations: int, movements: int
) -> dict[str, Any]:
    if products < 1 or locations < 1 or movements < 0:
        raise ValueError("--products and --locations must be >= 1, --movements >= 0")
    started = time.monotonic()
    rng = random.Random(products * 7919 + locations)
    tag = secrets.token_hex(2).upper()
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        async with conn.transaction():
            new_locations = [(f"WH-{tag}-{i:03d}", f"Warehouse {i}") for i in range(1, locations)]
            if new_locations:
                await conn.copy_records_to_table(
                    "locations", records=new_locations, columns=["code", "name"]
                )
            location_ids = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM locations WHERE code = ANY($1::text[]) ORDER BY id",
                    ["MAIN", *[c for c, _ in new_locations]],
                )
            ]
            first_id = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM products")
            rows = []
            for i in range(products):
                price = Decimal(rng.randint(50, 50_000)) / 100
                title = f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS)} {i}"
                rows.append(
                    (
                        first_id + i,
                        f"S{tag}-{i:07d}",
                        title,
                        price,
                        rng.choice(CATEGORIES),
                        rng.randint(0, 40),
                    )
                )
            await conn.copy_records_to_table(
                "products",
                records=rows,
                columns=["id", "sku", "title", "unit_price", "category", "reorder_point"],
            )
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('products', 'id'),"
                " (SELECT max(id) FROM products))"
            )
            if movements:
                await conn.execute(_MOVEMENTS_SQL, first_id, products, location_ids, movements)
                await conn.execute(
                    """
                    INSERT INTO stock_levels (product_id, location_id, quantity, updated_at)
                    SELECT product_id, location_id, sum(delta), max(created_at)
                    FROM movements WHERE product_id >= $1 AND reference = 'seed'
                    GROUP BY product_id, location_id
                    ON CONFLICT (product_id, location_id) DO UPDATE
                        SET quantity = stock_levels.quantity + excluded.quantity
                    """,
                    first_id,
                )
        await conn.execute("ANALYZE products; ANALYZE movements; ANALYZE stock_levels")
    finally:
        await conn.close()
    return {
        "products": products,
        "locations": len(location_ids),
        "movements": movements,
        "sku_prefix": f"S{tag}-",
        "seconds": round(time.monotonic() - started, 2),
    }
