"""What reports contain: every format parses and agrees with totals computed here, from the
data the test wrote; movement windows are half-open and in UTC; empty data gives empty reports."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openpyxl
import pytest
from PIL import Image

from shared.db.database import Database
from shared.reports.storage import purge_expired_reports
from tests.conftest import count
from tests.reports.conftest import Data, run_report


@pytest.fixture(autouse=True)
def _worker(module_worker: subprocess.Popen[bytes]) -> None:
    assert module_worker.poll() is None


def parse_csv(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def parse_xlsx(content: bytes) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    book = openpyxl.load_workbook(io.BytesIO(content), read_only=True)
    rows_sheet, totals_sheet = book.worksheets
    return list(rows_sheet.iter_rows(values_only=True)), list(
        totals_sheet.iter_rows(values_only=True)
    )


async def chart_of(
    client: httpx.AsyncClient, headers: dict[str, str], meta: dict[str, Any]
) -> Image.Image:
    r = await client.get(meta["links"]["chart"], headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(r.content))
    image.load()
    assert image.format == "PNG" and image.width >= 800 and image.height >= 400
    return image


class Warehouse:
    """Random products with cent prices over three locations, and the expected valuation."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.products: list[tuple[str, Decimal, str | None, dict[str, int]]] = []
        for i in range(40):
            price = Decimal(rng.randint(1, 99_999)) / 100
            category = rng.choice(["tools", "paint", None])
            stock = {loc: rng.choice([0, 0, 1, 3, 7, 250]) for loc in ("MAIN", "EAST", "WEST")}
            self.products.append((f"VAL-{i:03d}", price, category, stock))

    async def write(self, data: Data) -> None:
        for sku, price, category, stock in self.products:
            await data.product(sku, str(price), category)
            for loc, qty in stock.items():
                if qty:
                    await data.location(loc)
                    await data.move(sku, loc, qty)

    def rows(
        self, category: str | None = None, location: str | None = None
    ) -> Iterator[tuple[str, str | None, str, int, Decimal, Decimal]]:
        for sku, price, cat, stock in sorted(self.products):
            if category is not None and cat != category:
                continue
            for loc in sorted(stock):
                if stock[loc] and (location is None or loc == location):
                    yield sku, cat, loc, stock[loc], price, stock[loc] * price


async def test_valuation_in_every_format_agrees_with_an_independent_sum(
    client: httpx.AsyncClient, admin: dict[str, str], data: Data
) -> None:
    warehouse = Warehouse(seed=5)
    await warehouse.write(data)
    expected = list(warehouse.rows())
    value = sum((r[5] for r in expected), Decimal(0))
    by_category: dict[str | None, Decimal] = defaultdict(Decimal)
    by_location: dict[str, Decimal] = defaultdict(Decimal)
    for _, cat, loc, _, _, v in expected:
        by_category[cat] += v
        by_location[loc] += v

    meta, content = await run_report(client, admin, {"kind": "valuation", "format": "csv"})
    assert meta["row_count"] == len(expected)
    assert meta["kind"] == "valuation" and meta["format"] == "csv" and meta["params"] == {}
    rows = parse_csv(content)
    assert list(rows[0]) == [
        "sku",
        "title",
        "category",
        "location_code",
        "quantity",
        "unit_price",
        "value",
    ]
    assert [
        (
            r["sku"],
            r["category"] or None,
            r["location_code"],
            int(r["quantity"]),
            Decimal(r["unit_price"]),
            Decimal(r["value"]),
        )
        for r in rows
    ] == expected
    await chart_of(client, admin, meta)

    meta, content = await run_report(client, admin, {"kind": "valuation", "format": "json"})
    document = json.loads(content)
    assert document["kind"] == "valuation" and document["params"] == {}
    assert datetime.fromisoformat(document["generated_at"]).tzinfo is not None
    assert len(document["rows"]) == len(expected)
    assert [Decimal(r["value"]) for r in document["rows"]] == [r[5] for r in expected]
    totals = document["totals"]
    assert Decimal(totals["value"]) == value and totals["value"] == f"{value:.2f}"
    assert totals["quantity"] == sum(r[3] for r in expected)
    assert totals["rows"] == len(expected)
    assert {t["category"]: Decimal(t["value"]) for t in totals["by_category"]} == by_category
    assert {t["location_code"]: Decimal(t["value"]) for t in totals["by_location"]} == by_location
    job = (await client.get(meta["links"]["job"], headers=admin)).json()
    assert job["result"]["totals"] == {
        "rows": len(expected),
        "quantity": totals["quantity"],
        "value": totals["value"],
    }

    meta, content = await run_report(client, admin, {"kind": "valuation", "format": "xlsx"})
    sheet, totals_sheet = parse_xlsx(content)
    assert sheet[0] == (
        "sku",
        "title",
        "category",
        "location_code",
        "quantity",
        "unit_price",
        "value",
    )
    assert [(r[0], r[2], r[3], r[4]) for r in sheet[1:]] == [e[:4] for e in expected]
    # XLSX numbers are doubles; to the cent they are the exact values
    assert [Decimal(str(r[6])).quantize(Decimal("0.01")) for r in sheet[1:]] == [
        e[5] for e in expected
    ]
    assert totals_sheet[0][:4] == ("Overall", "rows", "quantity", "value")
    assert Decimal(str(totals_sheet[1][3])).quantize(Decimal("0.01")) == value


async def test_valuation_filters_by_category_and_location(
    client: httpx.AsyncClient, admin: dict[str, str], data: Data
) -> None:
    warehouse = Warehouse(seed=9)
    await warehouse.write(data)
    params = {"category": "paint", "location_code": "EAST"}
    meta, content = await run_report(
        client, admin, {"kind": "valuation", "format": "json", "params": params}
    )
    assert meta["params"] == params
    expected = list(warehouse.rows("paint", "EAST"))
    document = json.loads(content)
    assert [(r["sku"], r["location_code"]) for r in document["rows"]] == [
        (e[0], e[2]) for e in expected
    ]
    assert Decimal(document["totals"]["value"]) == sum((e[5] for e in expected), Decimal(0))


async def test_movements_window_is_half_open_and_in_utc_days(
    client: httpx.AsyncClient, admin: dict[str, str], data: Data
) -> None:
    await data.product("MOV-A", "1.00")
    await data.product("MOV-B", "1.00")
    since = datetime(2026, 2, 28, 22, 0, tzinfo=UTC)  # 2026-03-01T00:00+02:00
    until = since + timedelta(days=1)
    micro = timedelta(microseconds=1)
    # increases first, so no level goes below zero
    for sku, delta, at in [
        ("MOV-A", 100, since - micro),  # before the window
        ("MOV-A", 10, since),  # the first instant: in; UTC day 02-28
        ("MOV-A", 5, since + timedelta(minutes=90)),  # 23:30Z: still 02-28 in UTC
        ("MOV-B", 7, since + timedelta(hours=3)),  # 01:00Z on 03-01
        ("MOV-A", 1, until),  # the end is excluded
        ("MOV-A", -4, since + timedelta(minutes=95)),
        ("MOV-A", -2, since + timedelta(hours=4)),  # 02:00Z on 03-01
        ("MOV-B", -3, until - micro),  # the last instant: in
    ]:
        await data.move(sku, "MAIN", delta, at)
    body = {
        "kind": "movements",
        "format": "json",
        "params": {"since": "2026-03-01T00:00:00+02:00", "until": "2026-03-02T00:00:00+02:00"},
    }
    meta, content = await run_report(client, admin, body)
    assert meta["params"] == {"since": "2026-02-28T22:00:00Z", "until": "2026-03-01T22:00:00Z"}
    document = json.loads(content)
    assert document["rows"] == [
        {"day": "2026-02-28", "sku": "MOV-A", "in": 15, "out": 4, "net": 11, "movements": 3},
        {"day": "2026-03-01", "sku": "MOV-A", "in": 0, "out": 2, "net": -2, "movements": 1},
        {"day": "2026-03-01", "sku": "MOV-B", "in": 7, "out": 3, "net": 4, "movements": 2},
    ]
    totals = document["totals"]
    assert (totals["in"], totals["out"], totals["net"], totals["movements"]) == (22, 9, 13, 6)
    assert [d["day"] for d in totals["by_day"]] == ["2026-02-28", "2026-03-01"]
    await chart_of(client, admin, meta)

    body["format"] = "xlsx"
    body["params"] |= {"sku": "MOV-A"}  # type: ignore[operator]
    meta, content = await run_report(client, admin, body)
    sheet, totals_sheet = parse_xlsx(content)
    assert sheet[0] == ("day", "sku", "in", "out", "net", "movements")
    assert [(r[0].date(), *r[1:]) for r in sheet[1:]] == [
        (date(2026, 2, 28), "MOV-A", 15, 4, 11, 3),
        (date(2026, 3, 1), "MOV-A", 0, 2, -2, 1),
    ]
    assert totals_sheet[1] == ("all", 15, 6, 9, 4)


async def test_low_stock_rows_and_suggested_order_quantity(
    client: httpx.AsyncClient, admin: dict[str, str], data: Data, db: Any
) -> None:
    await data.location("EAST")
    await data.product("LOW-1", "2.50", "tools", reorder_point=10)
    await data.move("LOW-1", "MAIN", 1)
    await data.move("LOW-1", "EAST", 2)  # on hand 3 of 10
    await data.product("LOW-2", "1.10", None, reorder_point=0)  # nothing, and nothing needed
    await data.product("LOW-3", "4.00", "tools", reorder_point=5)
    await data.move("LOW-3", "MAIN", 5)  # exactly at the reorder point: low
    await data.product("LOW-4", "4.00", "tools", reorder_point=5)
    await data.move("LOW-4", "MAIN", 6)  # above: not low
    await data.product("LOW-5", "4.00", "tools", reorder_point=5)
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE products SET archived_at = now() WHERE sku = 'LOW-5'")

    meta, content = await run_report(client, admin, {"kind": "low_stock", "format": "csv"})
    rows = parse_csv(content)
    assert [
        (
            r["sku"],
            int(r["on_hand"]),
            int(r["reorder_point"]),
            int(r["shortfall"]),
            int(r["suggested_order_quantity"]),
            r["order_value"],
        )
        for r in rows
    ] == [
        ("LOW-1", 3, 10, 7, 17, "42.50"),  # up to twice the reorder point
        ("LOW-2", 0, 0, 0, 1, "1.10"),  # always above the reorder point
        ("LOW-3", 5, 5, 0, 5, "20.00"),
    ]
    assert meta["row_count"] == 3
    job = (await client.get(meta["links"]["job"], headers=admin)).json()
    assert job["result"]["totals"] == {
        "products": 3,
        "shortfall": 7,
        "suggested_order_quantity": 23,
        "order_value": "63.60",
    }
    await chart_of(client, admin, meta)


@pytest.mark.parametrize(
    ("kind", "fmt", "params"),
    [
        ("valuation", "xlsx", {}),
        ("movements", "csv", {"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}),
        ("low_stock", "json", {}),
    ],
)
async def test_empty_data_gives_an_empty_report(
    client: httpx.AsyncClient, admin: dict[str, str], kind: str, fmt: str, params: dict[str, str]
) -> None:
    meta, content = await run_report(client, admin, {"kind": kind, "format": fmt, "params": params})
    assert meta["row_count"] == 0
    if fmt == "csv":
        assert content.decode().splitlines() == ["day,sku,in,out,net,movements"]
    elif fmt == "json":
        document = json.loads(content)
        assert document["rows"] == [] and document["totals"]["products"] == 0
    else:
        sheet, totals_sheet = parse_xlsx(content)
        assert len(sheet) == 1 and totals_sheet[1][1:] == (0, 0, 0)
    await chart_of(client, admin, meta)


async def test_expired_reports_lose_their_files_and_answer_410(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    db: Database,
    data: Data,
) -> None:
    await data.product("EXP-1", "3.00")
    await data.move("EXP-1", "MAIN", 2)
    meta, content = await run_report(client, admin, {"kind": "valuation", "format": "csv"})
    assert content.endswith(b"EXP-1,Item EXP-1,,MAIN,2,3.00,6.00\n")
    r = await client.get(meta["links"]["download"], headers=admin)
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-length"] == str(len(content))
    async with db.pool.acquire() as conn:
        assert await purge_expired_reports(conn) == 0  # not expired yet
        assert await count(db, "SELECT count(*) FROM report_chunks") == 2  # file and chart
        await conn.execute("UPDATE reports SET expires_at = now() - interval '1 second'")
        assert await purge_expired_reports(conn) == 1
    assert await count(db, "SELECT count(*) FROM report_chunks") == 0
    for link in ("download", "chart"):
        r = await client.get(meta["links"][link], headers=admin)
        assert r.status_code == 410 and r.json()["type"].endswith("/report-expired")
    assert (await client.get(meta["links"]["self"], headers=admin)).json()["status"] == "complete"
