"""``stockroom seed``: realistic demo data, fast.

What it makes:
- products (COPY) with log-uniform prices, ten categories and reorder points; about one in ten
  is a slow mover that is never restocked after its opening balance, so the low-stock list has
  something on it;
- with ``--movements K``: an opening-balance restock for every product x location (so every
  pair has a stock level), then the rest of the ledger spread over the last 90 days in time
  order (ids follow time): restocks, picks, returns, damage and counts, with Zipf-like
  popularity — a few SKUs move a lot, most move a little;
- stock levels equal to the sum of their movements, and no running balance ever below zero
  (each opening balance covers every later decrease of its pair).

The ledger is generated inside PostgreSQL in set-based statements (``generate_series`` into a
temporary table, then one ``INSERT … SELECT`` in id order). A large load into a table that is
small next to it runs with the ledger's secondary indexes and foreign keys dropped and rebuilt
after (one index build and one validating join each, instead of per-row upkeep): a bulk load
holds its tables locked until it commits. Seeding is a bulk load, not a stream of API
mutations: it writes no audit events."""

from __future__ import annotations

import math
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

HISTORY_DAYS = 90
# One product in SLOW_MOVER_EVERY is never restocked after its opening balance.
SLOW_MOVER_EVERY = 10
# Below this many movements, or when the ledger already holds more rows than the load adds,
# rows go in with their indexes in place.
BULK_LOAD_MIN_ROWS = 50_000

# $1 first product id, $2 number of products, $3 location ids, $4 activity rows, $5 a prime
# coprime with $2 (scatters popularity over the SKU order).
# Popularity: product rank = floor(n * u^3) for uniform u — the top 1 % of products get about
# a fifth of the movements. Reasons: 20 % restock (+5..200), 70 % pick (-1..-16), 5 % return
# (+1..4), 3 % damage (-1..-2), 2 % count corrections (+/-1..2). Slow movers get picks instead
# of restocks.
_ACTIVITY_SQL = f"""
INSERT INTO seed_activity (g, product_id, location_id, reason, delta, created_at)
WITH draws AS (
    SELECT g,
           ((hashint8extended(g, 1) & 16777215)::float8 / 16777216) AS u_product,
           (hashint8extended(g, 2) & 2147483647) AS h_location,
           (hashint8extended(g, 3) & 1023) AS h_reason,
           (hashint8extended(g, 4) & 2147483647) AS h_size
    FROM generate_series(0, $4::bigint - 1) AS g
), picked AS (
    SELECT g, h_reason, h_size,
           $1::bigint + (floor($2::bigint * u_product ^ 3)::bigint * $5::bigint) % $2::bigint
               AS product_id,
           ($3::int[])[1 + h_location % cardinality($3::int[])] AS location_id
    FROM draws
), typed AS (
    SELECT g, product_id, location_id, h_size,
           CASE
               WHEN h_reason < 205 AND product_id % {SLOW_MOVER_EVERY} <> 0 THEN 'restock'
               WHEN h_reason < 922 THEN 'pick'
               WHEN h_reason < 973 THEN 'return'
               WHEN h_reason < 1004 THEN 'damage'
               ELSE 'count'
           END AS reason
    FROM picked
)
SELECT g, product_id, location_id, reason,
       CASE reason
           WHEN 'restock' THEN 5 + h_size % 196
           WHEN 'pick' THEN -(1 + h_size % 16)
           WHEN 'return' THEN 1 + h_size % 4
           WHEN 'damage' THEN -(1 + h_size % 2)
           ELSE CASE WHEN h_size % 2 = 0 THEN 1 + h_size % 3 ELSE -(1 + h_size % 2) END
       END::bigint AS delta,
       now() - interval '{HISTORY_DAYS} days'
           + make_interval(secs => (g + 1)::float8 / ($4::bigint + 1) * {HISTORY_DAYS} * 86400)
           AS created_at
FROM typed
"""  # noqa: S608

# Per product x location (the first $4 of them, in id order): the opening balance covers every
# decrease that follows it, plus a base of 1..25 (1..3 for slow movers).
_PAIRS_SQL = f"""
INSERT INTO seed_pairs (product_id, location_id, opening, net)
SELECT p.id, l.id,
       1 + (hashint8extended(p.id * 1000 + l.id, 5) & 2147483647)
           % CASE WHEN p.id % {SLOW_MOVER_EVERY} = 0 THEN 3 ELSE 25 END
       + coalesce(a.decreases, 0),
       coalesce(a.net, 0)
FROM products p
CROSS JOIN unnest($3::int[]) AS l(id)
LEFT JOIN (
    SELECT product_id, location_id,
           sum(-delta) FILTER (WHERE delta < 0) AS decreases, sum(delta) AS net
    FROM seed_activity GROUP BY product_id, location_id
) a ON a.product_id = p.id AND a.location_id = l.id
WHERE p.id >= $1::bigint AND p.id < $1::bigint + $2::bigint
ORDER BY p.id, l.id
LIMIT $4::bigint
"""  # noqa: S608


def _coprime_step(n: int) -> int:
    for step in (48271, 69621, 16807, 7919, 104729):
        if math.gcd(step, n) == 1:
            return step
    return 1


async def _secondary_indexes_and_keys(conn: Any, table: str) -> tuple[list[str], list[str]]:
    """The DDL to rebuild ``table``'s non-unique indexes and foreign keys, as the catalog has
    them (so the load follows the migrations, whatever they become)."""
    indexes = await conn.fetch(
        """
        SELECT i.relname AS name, pg_get_indexdef(i.oid) AS ddl
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = $1::regclass AND NOT x.indisunique AND NOT x.indisprimary
        """,
        table,
    )
    keys = await conn.fetch(
        """
        SELECT conname AS name, pg_get_constraintdef(oid) AS ddl
        FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f'
        """,
        table,
    )
    for row in indexes:
        await conn.execute(f'DROP INDEX "{row["name"]}"')
    for row in keys:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{row["name"]}"')
    return (
        [row["ddl"] for row in indexes],
        [f'ALTER TABLE {table} ADD CONSTRAINT "{row["name"]}" {row["ddl"]}' for row in keys],
    )


async def seed(
    database_url: str, *, products: int, locations: int, movements: int
) -> dict[str, Any]:
    if products < 1 or locations < 1 or movements < 0:
        raise ValueError("--products and --locations must be >= 1, --movements >= 0")
    started = time.monotonic()
    rng = random.Random(products * 7919 + locations)
    tag = secrets.token_hex(2).upper()
    timings: dict[str, float] = {}
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '256MB'")
            await conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
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
                # log-uniform between 0.50 and 500.00: many cheap parts, a few costly ones
                price = Decimal(round(50 * 1000 ** rng.random())) / 100
                title = f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS)} {i}"
                product_id = first_id + i
                slow = product_id % SLOW_MOVER_EVERY == 0
                rows.append(
                    (
                        product_id,
                        f"S{tag}-{i:07d}",
                        title,
                        price,
                        rng.choice(CATEGORIES),
                        rng.randint(10, 40) if slow else rng.randint(0, 40),
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
            timings["products"] = time.monotonic() - started
            if movements:
                await _seed_ledger(conn, first_id, products, location_ids, movements, timings)
        mark = time.monotonic()
        await conn.execute("ANALYZE products; ANALYZE movements; ANALYZE stock_levels")
        timings["analyze"] = time.monotonic() - mark
    finally:
        await conn.close()
    return {
        "products": products,
        "locations": len(location_ids),
        "movements": movements,
        "sku_prefix": f"S{tag}-",
        "seconds": round(time.monotonic() - started, 2),
        "phases": {k: round(v, 2) for k, v in timings.items()},
    }


async def _seed_ledger(
    conn: Any,
    first_id: int,
    products: int,
    location_ids: list[int],
    movements: int,
    timings: dict[str, float],
) -> None:
    openings = min(movements, products * len(location_ids))
    activity = movements - openings
    mark = time.monotonic()
    await conn.execute(
        """
        CREATE TEMPORARY TABLE seed_activity (
            g bigint, product_id bigint, location_id int, reason text, delta bigint,
            created_at timestamptz
        ) ON COMMIT DROP;
        CREATE TEMPORARY TABLE seed_pairs (
            product_id bigint, location_id int, opening bigint, net bigint
        ) ON COMMIT DROP
        """
    )
    await conn.execute(
        _ACTIVITY_SQL,
        first_id,
        products,
        location_ids,
        activity,
        _coprime_step(products),
    )
    await conn.execute(_PAIRS_SQL, first_id, products, location_ids, openings)
    timings["generate"] = time.monotonic() - mark

    existing = await conn.fetchval(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'movements'::regclass"
    )
    bulk = movements >= BULK_LOAD_MIN_ROWS and movements > existing
    indexes: list[str] = []
    keys: list[str] = []
    if bulk:
        for table in ("movements", "stock_levels"):
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            table_indexes, table_keys = await _secondary_indexes_and_keys(conn, table)
            indexes += table_indexes
            keys += table_keys

    mark = time.monotonic()
    # Openings first (the earliest ids and times), then the activity in time order. Activity
    # exists only once every pair has its opening (see ``openings``).
    await conn.execute(
        f"""
        INSERT INTO movements (product_id, location_id, delta, reason, reference, created_at)
        SELECT product_id, location_id, opening, 'restock', 'seed-opening',
               now() - interval '{HISTORY_DAYS} days'
        FROM seed_pairs ORDER BY product_id, location_id
        """  # noqa: S608
    )
    await conn.execute(
        """
        INSERT INTO movements (product_id, location_id, delta, reason, reference, created_at)
        SELECT product_id, location_id, delta, reason, 'seed', created_at
        FROM seed_activity ORDER BY g
        """
    )
    timings["insert"] = time.monotonic() - mark
    mark = time.monotonic()
    await conn.execute(
        """
        INSERT INTO stock_levels (product_id, location_id, quantity, updated_at)
        SELECT product_id, location_id, opening + net, now() FROM seed_pairs
        ON CONFLICT (product_id, location_id) DO UPDATE
            SET quantity = stock_levels.quantity + excluded.quantity
        """
    )
    timings["stock_levels"] = time.monotonic() - mark
    mark = time.monotonic()
    for ddl in [*indexes, *keys]:
        await conn.execute(ddl)
    timings["rebuild"] = time.monotonic() - mark
