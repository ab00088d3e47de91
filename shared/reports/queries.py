"""The SQL behind each report kind: the rows (streamed with COPY, in a stable order), and the
totals (aggregated in PostgreSQL with exact NUMERIC arithmetic, read in the same snapshot).

Definitions:
- ``valuation``: per live product x location with stock (quantity > 0): quantity,
  unit_price and value = quantity x unit_price; totals per category, per location, overall.
- ``movements``: the ledger in ``[since, until)`` per UTC day and SKU (archived products
  included: history is kept): ``in`` (sum of increases), ``out`` (sum of decreases, positive),
  ``net`` and the number of movements; a transfer counts as out at one location and in at the
  other. Totals per day and overall.
- ``low_stock``: live products with on_hand (over all locations) ≤ reorder_point, with
  ``shortfall`` = reorder_point - on_hand and ``suggested_order_quantity`` =
  max(2 x reorder_point - on_hand, reorder_point - on_hand + 1): enough to bring the stock up
  to twice its reorder point, and always enough to lift it above the reorder point (so a
  product whose reorder point is 0 and stock is 0 gets 1). ``order_value`` = that x unit_price.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from shared.db.connection import Connection
from shared.reports.schemas import (
    LowStockRequest,
    MovementsRequest,
    ReportKind,
    ValuationRequest,
)

AnyRequest = ValuationRequest | MovementsRequest | LowStockRequest
Cell = tuple[str, Any]

LOW_STOCK_CHART_TOP = 25

# --- valuation ---------------------------------------------------------------------------------

_VALUATION_FROM = """
FROM stock_levels s
JOIN products p ON p.id = s.product_id
JOIN locations l ON l.id = s.location_id
WHERE p.archived_at IS NULL AND s.quantity > 0
  AND ($1::text IS NULL OR p.category = $1::text)
  AND ($2::text IS NULL OR l.code = $2::text)
"""
VALUATION_ROWS = f"""
SELECT p.sku, p.title, p.category, l.code AS location_code, s.quantity, p.unit_price,
       s.quantity * p.unit_price AS value
{_VALUATION_FROM}
ORDER BY p.sku, l.code
"""
_VALUATION_TOTALS = f"""
SELECT GROUPING(p.category) AS by_location, GROUPING(l.code) AS by_category,
       p.category, l.code AS location_code,
       count(*) AS rows, coalesce(sum(s.quantity), 0)::bigint AS quantity,
       coalesce(sum(s.quantity * p.unit_price), 0) AS value
{_VALUATION_FROM}
GROUP BY GROUPING SETS ((p.category), (l.code), ())
ORDER BY 1, 2, 3, 4
"""
VALUATION_COLUMNS = [
    ("sku", "str"),
    ("title", "text"),
    ("category", "str?"),
    ("location_code", "str"),
    ("quantity", "int"),
    ("unit_price", "money"),
    ("value", "money"),
]

# --- movements ---------------------------------------------------------------------------------

_MOVEMENTS_WHERE = """
WHERE m.created_at >= $1::timestamptz AND m.created_at < $2::timestamptz
  AND ($3::text IS NULL OR m.product_id = (SELECT id FROM products WHERE sku = $3::text))
  AND ($4::text IS NULL OR m.location_id = (SELECT id FROM locations WHERE code = $4::text))
"""
# Aggregate on the narrow keys (day, product id) first, then name the SKUs.
MOVEMENTS_ROWS = f"""
SELECT a.day, p.sku, a."in", a."out", a.net, a.movements
FROM (
    SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day, m.product_id,
           coalesce(sum(m.delta) FILTER (WHERE m.delta > 0), 0) AS "in",
           coalesce(-sum(m.delta) FILTER (WHERE m.delta < 0), 0) AS "out",
           sum(m.delta) AS net, count(*) AS movements
    FROM movements m
    {_MOVEMENTS_WHERE}
    GROUP BY 1, 2
) a
JOIN products p ON p.id = a.product_id
ORDER BY a.day, p.sku
"""  # noqa: S608
_MOVEMENTS_TOTALS = f"""
SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(sum(m.delta) FILTER (WHERE m.delta > 0), 0)::bigint AS "in",
       coalesce(-sum(m.delta) FILTER (WHERE m.delta < 0), 0)::bigint AS "out",
       sum(m.delta)::bigint AS net, count(*) AS movements
FROM movements m
{_MOVEMENTS_WHERE}
GROUP BY 1
ORDER BY 1
"""  # noqa: S608
MOVEMENTS_COLUMNS = [
    ("day", "date"),
    ("sku", "str"),
    ("in", "int"),
    ("out", "int"),
    ("net", "int"),
    ("movements", "int"),
]

# --- low stock ---------------------------------------------------------------------------------

_LOW_STOCK_BASE = """
WITH low AS (
    SELECT p.sku, p.title, p.category, coalesce(s.on_hand, 0) AS on_hand, p.reorder_point,
           p.unit_price
    FROM products p
    LEFT JOIN (
        SELECT product_id, sum(quantity)::bigint AS on_hand FROM stock_levels GROUP BY 1
    ) s ON s.product_id = p.id
    WHERE p.archived_at IS NULL AND coalesce(s.on_hand, 0) <= p.reorder_point
      AND ($1::text IS NULL OR p.category = $1::text)
), rows AS (
    SELECT sku, title, category, on_hand, reorder_point, reorder_point - on_hand AS shortfall,
           greatest(2 * reorder_point - on_hand, reorder_point - on_hand + 1)
               AS suggested_order_quantity,
           unit_price
    FROM low
)
"""
LOW_STOCK_ROWS = f"""{_LOW_STOCK_BASE}
SELECT sku, title, category, on_hand, reorder_point, shortfall, suggested_order_quantity,
       unit_price, suggested_order_quantity * unit_price AS order_value
FROM rows
ORDER BY sku
"""  # noqa: S608
_LOW_STOCK_TOTALS = f"""{_LOW_STOCK_BASE}
SELECT GROUPING(category) AS overall, category, count(*) AS products,
       coalesce(sum(shortfall), 0)::bigint AS shortfall,
       coalesce(sum(suggested_order_quantity), 0)::bigint AS suggested_order_quantity,
       coalesce(sum(suggested_order_quantity * unit_price), 0) AS order_value
FROM rows
GROUP BY GROUPING SETS ((category), ())
ORDER BY 1 DESC, 2
"""  # noqa: S608
_LOW_STOCK_TOP = f"""{_LOW_STOCK_BASE}
SELECT sku, on_hand, reorder_point, shortfall, suggested_order_quantity
FROM rows
ORDER BY shortfall DESC, suggested_order_quantity DESC, sku
LIMIT {LOW_STOCK_CHART_TOP}
"""  # noqa: S608
LOW_STOCK_COLUMNS = [
    ("sku", "str"),
    ("title", "text"),
    ("category", "str?"),
    ("on_hand", "int"),
    ("reorder_point", "int"),
    ("shortfall", "int"),
    ("suggested_order_quantity", "int"),
    ("unit_price", "money"),
    ("order_value", "money"),
]


def _money(value: Decimal | None) -> str:
    return f"{value if value is not None else Decimal(0):.2f}"


@dataclass(slots=True)
class Summary:
    """What a report knows before its rows stream: totals, the row count when it is cheap to
    know, what the chart draws, and how the totals sheet of an XLSX lays out."""

    totals: dict[str, Any]
    row_count: int | None
    chart: dict[str, Any] = field(default_factory=dict)
    sheet: list[list[Cell]] = field(default_factory=list)
    sheet_columns: list[str] = field(default_factory=list)
    # movements: the number of movements per day, in day order, for progress
    weights: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Definition:
    kind: ReportKind
    sql: str
    args: tuple[Any, ...]
    columns: list[tuple[str, str]]
    sheet_name: str

    def slices(self) -> list[tuple[Any, ...]]:
        """The arguments of each statement the rows stream from, in order. Movements go one
        UTC day at a time: each day is an index range that aggregates and sorts in memory and
        starts streaming at once, where the whole window in one statement would sort millions
        of rows on disk before the first row (and keep progress and cancellation waiting)."""
        if self.kind is not ReportKind.movements:
            return [self.args]
        since, until, *rest = self.args
        bounds = [since]
        day = datetime.combine(since.astimezone(UTC).date(), time(), UTC) + timedelta(days=1)
        while day < until:
            bounds.append(day)
            day += timedelta(days=1)
        bounds.append(until)
        return [(start, end, *rest) for start, end in itertools.pairwise(bounds)]


def definition(request: AnyRequest) -> Definition:
    if isinstance(request, ValuationRequest):
        p = request.params
        return Definition(
            ReportKind.valuation,
            VALUATION_ROWS,
            (p.category, p.location_code),
            VALUATION_COLUMNS,
            "Valuation",
        )
    if isinstance(request, MovementsRequest):
        m = request.params
        return Definition(
            ReportKind.movements,
            MOVEMENTS_ROWS,
            (m.since, m.until, m.sku, m.location_code),
            MOVEMENTS_COLUMNS,
            "Movements",
        )
    return Definition(
        ReportKind.low_stock,
        LOW_STOCK_ROWS,
        (request.params.category,),
        LOW_STOCK_COLUMNS,
        "Low stock",
    )


async def summarise(conn: Connection, d: Definition) -> Summary:
    if d.kind is ReportKind.valuation:
        return await _valuation_summary(conn, d)
    if d.kind is ReportKind.movements:
        return await _movements_summary(conn, d)
    return await _low_stock_summary(conn, d)


async def _valuation_summary(conn: Connection, d: Definition) -> Summary:
    rows = await conn.fetch(_VALUATION_TOTALS, *d.args)
    overall = next((r for r in rows if r["by_location"] and r["by_category"]), None)
    by_category = [
        {
            "category": r["category"],
            "rows": r["rows"],
            "quantity": r["quantity"],
            "value": _money(r["value"]),
        }
        for r in rows
        if not r["by_location"] and r["by_category"]
    ]
    by_location = [
        {
            "location_code": r["location_code"],
            "rows": r["rows"],
            "quantity": r["quantity"],
            "value": _money(r["value"]),
        }
        for r in rows
        if r["by_location"] and not r["by_category"]
    ]
    row_count: int = overall["rows"] if overall else 0
    totals: dict[str, Any] = {
        "rows": row_count,
        "quantity": overall["quantity"] if overall else 0,
        "value": _money(overall["value"] if overall else None),
        "by_category": by_category,
        "by_location": by_location,
    }
    sheet: list[list[Cell]] = [
        [("bold", "Overall"), ("bold", "rows"), ("bold", "quantity"), ("bold", "value")],
        [
            ("str", "all"),
            ("int", totals["rows"]),
            ("int", totals["quantity"]),
            ("money", totals["value"]),
        ],
        [],
        [("bold", "category"), ("bold", "rows"), ("bold", "quantity"), ("bold", "value")],
        *[
            [
                ("str", g["category"] or "(none)"),
                ("int", g["rows"]),
                ("int", g["quantity"]),
                ("money", g["value"]),
            ]
            for g in by_category
        ],
        [],
        [("bold", "location_code"), ("bold", "rows"), ("bold", "quantity"), ("bold", "value")],
        *[
            [
                ("str", g["location_code"]),
                ("int", g["rows"]),
                ("int", g["quantity"]),
                ("money", g["value"]),
            ]
            for g in by_location
        ],
    ]
    return Summary(
        totals=totals,
        row_count=row_count,
        sheet=sheet,
        sheet_columns=["str", "int", "int", "money"],
    )


async def _movements_summary(conn: Connection, d: Definition) -> Summary:
    rows = await conn.fetch(_MOVEMENTS_TOTALS, *d.args)
    by_day = [
        {
            "day": r["day"].isoformat(),
            "in": r["in"],
            "out": r["out"],
            "net": r["net"],
            "movements": r["movements"],
        }
        for r in rows
    ]
    totals = {
        "in": sum(day["in"] for day in by_day),
        "out": sum(day["out"] for day in by_day),
        "net": sum(day["net"] for day in by_day),
        "movements": sum(day["movements"] for day in by_day),
        "by_day": by_day,
    }
    names = ["in", "out", "net", "movements"]
    sheet: list[list[Cell]] = [
        [("bold", "Overall"), *[("bold", n) for n in names]],
        [("str", "all"), *[("int", totals[n]) for n in names]],
        [],
        [("bold", "day"), *[("bold", n) for n in names]],
        *[[("date", day["day"]), *[("int", day[n]) for n in names]] for day in by_day],
    ]
    return Summary(
        totals=totals,
        row_count=None,
        sheet=sheet,
        sheet_columns=["date", "int", "int", "int", "int"],
        weights=[(day["day"], day["movements"]) for day in by_day],
    )


async def _low_stock_summary(conn: Connection, d: Definition) -> Summary:
    rows = await conn.fetch(_LOW_STOCK_TOTALS, *d.args)
    top = await conn.fetch(_LOW_STOCK_TOP, *d.args)
    overall = next((r for r in rows if r["overall"]), None)
    by_category = [
        {
            "category": r["category"],
            "products": r["products"],
            "shortfall": r["shortfall"],
            "suggested_order_quantity": r["suggested_order_quantity"],
            "order_value": _money(r["order_value"]),
        }
        for r in rows
        if not r["overall"]
    ]
    products: int = overall["products"] if overall else 0
    totals: dict[str, Any] = {
        "products": products,
        "shortfall": overall["shortfall"] if overall else 0,
        "suggested_order_quantity": overall["suggested_order_quantity"] if overall else 0,
        "order_value": _money(overall["order_value"] if overall else None),
        "by_category": by_category,
    }
    names = ["products", "shortfall", "suggested_order_quantity"]
    sheet: list[list[Cell]] = [
        [("bold", "Overall"), *[("bold", n) for n in names], ("bold", "order_value")],
        [("str", "all"), *[("int", totals[n]) for n in names], ("money", totals["order_value"])],
        [],
        [("bold", "category"), *[("bold", n) for n in names], ("bold", "order_value")],
        *[
            [
                ("str", g["category"] or "(none)"),
                *[("int", g[n]) for n in names],
                ("money", g["order_value"]),
            ]
            for g in by_category
        ],
    ]
    return Summary(
        totals=totals,
        row_count=products,
        chart={"top": [dict(r) for r in top]},
        sheet=sheet,
        sheet_columns=["str", "int", "int", "int", "money"],
    )


async def estimate_rows(conn: Connection, d: Definition) -> int | None:
    """The planner's estimate of the row count (a planning round trip, no execution): what
    progress goes by until the totals give the exact count."""
    if d.kind is ReportKind.movements:
        return None
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {await inline(conn, d.sql, d.args)}")
    try:
        document = plan if isinstance(plan, list) else json.loads(plan)
        return int(document[0]["Plan"]["Plan Rows"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


_PLACEHOLDER = re.compile(r"\$(\d+)\b")


async def inline(conn: Connection, sql: str, args: tuple[Any, ...]) -> str:
    """``sql`` with its ``$n`` parameters replaced by literals PostgreSQL quoted itself, for
    statements that take none (``COPY (query) TO ...``)."""
    if not args:
        return sql
    statement = await conn.prepare(sql)
    types = [
        f'"{t.schema}"."{"_" + t.name[:-2] if t.name.endswith("[]") else t.name}"'
        for t in statement.get_parameters()
    ]
    casts = ", ".join(f"quote_literal(${i}::{t}::text)" for i, t in enumerate(types, start=1))
    literals = await conn.fetchrow(f"SELECT {casts}", *args)
    assert literals is not None
    return _PLACEHOLDER.sub(
        lambda m: literals[int(m.group(1)) - 1] if literals[int(m.group(1)) - 1] else "NULL",
        sql,
    )
