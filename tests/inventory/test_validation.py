"""Inventory: every SPEC validation rule, with 'nothing written' checked on each rejection (no
movement, no stock level change, no job, no location, no idempotency record).

The cases of one rule run in one test (each labelled in its assertion messages): a test costs
a fixture and a table reset, and there are a hundred and fifty cases."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.db.database import Database
from tests.inventory.helpers import (
    ADJUST,
    BATCH,
    LOCATIONS,
    PRODUCTS,
    RESTOCK,
    TRANSFER,
    error_locs,
    make_location,
    make_product,
    problem,
    restock,
    snapshot,
)

SKU = "WID-1"


@pytest.fixture
async def stocked(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    """WID-1 with 10 at MAIN and 10 at DOCK; OTHER-1 with nothing; OLD-1 archived with 5."""
    await make_product(client, admin, SKU)
    await make_product(client, admin, "OTHER-1")
    await make_product(client, admin, "OLD-1")
    await make_location(client, admin, "DOCK")
    await restock(client, admin, SKU, 10)
    await restock(client, admin, SKU, 10, "DOCK")
    await restock(client, admin, "OLD-1", 5)
    assert (await client.delete(f"{PRODUCTS}/OLD-1", headers=admin)).status_code == 204
    return admin


async def rejected(
    client: httpx.AsyncClient,
    db: Database,
    headers: dict[str, str],
    path: str,
    body: Any,
    status: int,
    slug: str | None = None,
) -> dict[str, Any]:
    """POST ``body``, expect a problem with ``status`` (and type ``slug``), and check that
    nothing at all was written."""
    before = await snapshot(db)
    r = await client.post(path, json=body, headers=headers)
    assert r.status_code == status, (body, r.text)
    result = problem(r, status, slug)
    assert await snapshot(db) == before, body
    return result


async def all_rejected(
    client: httpx.AsyncClient,
    db: Database,
    headers: dict[str, str],
    path: str,
    cases: list[tuple[dict[str, Any], tuple[Any, ...] | None]],
    status: int = 422,
    slug: str | None = None,
) -> None:
    """Each ``(body, loc)`` is rejected with nothing written; ``loc`` (when given) is among
    the problem's error locations."""
    for body, loc in cases:
        problem_body = await rejected(client, db, headers, path, body, status, slug)
        if loc is not None:
            assert loc in error_locs(problem_body), (body, problem_body)


def line(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"sku": SKU, "quantity": 5}
    body.update(overrides)
    return body


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


BAD_QUANTITIES = [0, -1, 1_000_001, 1.5, 2.0, "5", True, False, None, [5], {"n": 5}]


# --- restock ---------------------------------------------------------------------------------


async def test_restock_quantity_is_an_int_from_1_to_a_million(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    cases = [(line(quantity=q), ("body", "quantity")) for q in BAD_QUANTITIES]
    await all_rejected(client, db, stocked, RESTOCK, cases)
    for quantity in (1, 1_000_000):
        r = await client.post(RESTOCK, json=line(quantity=quantity), headers=stocked)
        assert r.status_code == 201, r.text
    r = await client.get(f"{PRODUCTS}/{SKU}", headers=stocked)
    assert r.json()["on_hand"] == 20 + 1 + 1_000_000


async def test_restock_bad_and_missing_fields(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    bad: list[tuple[str, Any]] = [
        ("sku", "AB"),
        ("sku", "wid-1"),
        ("sku", "WID_1"),
        ("sku", 12345),
        ("sku", None),
        ("location_code", ""),
        ("location_code", "main"),
        ("location_code", "A" * 17),
        ("location_code", "MA IN"),
        ("location_code", 7),
        ("location_code", None),
        ("reference", ""),
        ("reference", "r" * 101),
        ("reference", 5),
        ("note", "n" * 1001),
        ("note", 5),
        ("surprise", "field"),
    ]
    cases = [(line(**{field: value}), ("body", field)) for field, value in bad]
    cases += [(without(line(), field), ("body", field)) for field in ("sku", "quantity")]
    await all_rejected(client, db, stocked, RESTOCK, cases)


async def test_restock_body_must_be_a_json_object(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    before = await snapshot(db)
    for content in (b"{not json", b"[1,2]", b"null", b"", b'"x"'):
        r = await client.post(
            RESTOCK, content=content, headers={**stocked, "Content-Type": "application/json"}
        )
        assert r.status_code == 422, content
        problem(r, 422)
    assert await snapshot(db) == before


async def test_restock_unknown_sku_or_location_is_422_with_loc(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    body = await rejected(client, db, stocked, RESTOCK, line(sku="NOPE-1"), 422)
    assert error_locs(body) == [("body", "sku")]
    assert "NOPE-1" in body["detail"]
    assert {"loc", "msg", "type"} <= set(body["errors"][0])
    body = await rejected(client, db, stocked, RESTOCK, line(location_code="NOWHERE"), 422)
    assert error_locs(body) == [("body", "location_code")]


async def test_restock_archived_product_is_409(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    await rejected(client, db, stocked, RESTOCK, line(sku="OLD-1"), 409, "product-archived")
    # an archived product named together with an unknown location: still refused
    await rejected(client, db, stocked, RESTOCK, line(sku="OLD-1", location_code="NOWHERE"), 409)


async def test_inventory_write_scope_required(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str], make_key: Any
) -> None:
    reader = await make_key("inventory:read", "catalog:write")
    await rejected(client, db, reader, RESTOCK, line(), 403)
    await rejected(client, db, {}, RESTOCK, line(), 401)
    writer = await make_key("inventory:write")
    assert (await client.post(RESTOCK, json=line(), headers=writer)).status_code == 201


# --- locations -------------------------------------------------------------------------------


async def test_location_codes(
    client: httpx.AsyncClient, db: Database, admin: dict[str, str]
) -> None:
    bad = [
        {"code": ""},
        {"code": "A" * 17},
        {"code": "dock"},
        {"code": "DOCK_1"},
        {"code": "DOCK 1"},
        {"code": "DÖCK"},
        {"code": "DOCK.1"},
        {"code": 5},
        {"code": None},
        {},
        {"code": "OK", "name": "n" * 101},
        {"code": "OK", "name": 5},
        {"code": "OK", "surprise": 1},
    ]
    await all_rejected(client, db, admin, LOCATIONS, [(body, None) for body in bad])
    for code in ("A", "Z" * 16, "DOCK-7", "0-9", "B12"):
        r = await client.post(LOCATIONS, json={"code": code}, headers=admin)
        assert r.status_code == 201, (code, r.text)
        assert r.json()["code"] == code


async def test_duplicate_location_is_409(
    client: httpx.AsyncClient, db: Database, admin: dict[str, str]
) -> None:
    await make_location(client, admin, "DOCK", "Dock")
    await rejected(client, db, admin, LOCATIONS, {"code": "DOCK", "name": "x"}, 409)
    body = await rejected(client, db, admin, LOCATIONS, {"code": "MAIN"}, 409)
    assert body["type"].endswith("/duplicate-location")


# --- batches ---------------------------------------------------------------------------------


async def test_batch_size_is_1_to_1000(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    cases = [({"lines": [line()] * n}, ("body", "lines")) for n in (0, 1001)]
    await all_rejected(client, db, stocked, BATCH, cases)
    before = await snapshot(db)
    r = await client.post(BATCH, json={"lines": [line(quantity=1)] * 1000}, headers=stocked)
    assert r.status_code == 201, r.text
    after = await snapshot(db)
    assert after.movements == before.movements + 1000
    assert after.audit_jobs == before.audit_jobs + 1  # one audit entry for the batch
    assert after.levels[(SKU, "MAIN")] == before.levels[(SKU, "MAIN")] + 1000


async def test_batch_with_one_invalid_line_writes_nothing(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"quantity": 0}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"sku": "x"}, "sku"),
        ({"location_code": "dock"}, "location_code"),
        ({"surprise": 1}, "surprise"),
    ]
    cases = []
    for overrides, field in bad:
        lines = [line(), line(location_code="DOCK"), line(sku="OTHER-1"), line(**overrides)]
        cases.append(({"lines": [*lines, line()]}, ("body", "lines", 3, field)))
    await all_rejected(client, db, stocked, BATCH, cases)


async def test_batch_with_one_unknown_reference_writes_nothing(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    unknown: list[tuple[dict[str, Any], str]] = [
        ({"sku": "NOPE-1"}, "sku"),
        ({"location_code": "NOWHERE"}, "location_code"),
    ]
    for overrides, field in unknown:
        lines = [line(), line(location_code="DOCK"), line(**overrides), line(sku="OTHER-1")]
        body = await rejected(client, db, stocked, BATCH, {"lines": lines}, 422)
        assert error_locs(body) == [("body", "lines", 2, field)]
    # a batch of one line still names the line
    body = await rejected(client, db, stocked, BATCH, {"lines": [line(sku="NOPE-1")]}, 422)
    assert error_locs(body) == [("body", "lines", 0, "sku")]


async def test_batch_with_an_archived_product_writes_nothing(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    lines = [line(), line(sku="OLD-1"), line(sku="OTHER-1")]
    await rejected(client, db, stocked, BATCH, {"lines": lines}, 409, "product-archived")


async def test_batch_envelope_rules(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    bad = [
        {},
        {"lines": None},
        {"lines": line()},
        {"lines": [line()], "surprise": 1},
        {"lines": [line()], "reference": ""},
        {"lines": [line()], "reference": "r" * 101},
    ]
    await all_rejected(client, db, stocked, BATCH, [(body, None) for body in bad])


# --- adjustments -----------------------------------------------------------------------------


def adjustment(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"sku": SKU, "location_code": "MAIN", "delta": -1, "reason": "pick"}
    body.update(overrides)
    return body


async def test_bad_adjustments_are_rejected(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    bad: list[tuple[str, Any]] = [
        ("delta", True),
        ("delta", 1.5),
        ("delta", -2.0),
        ("delta", "-3"),
        ("delta", None),
        ("reason", "theft"),
        ("reason", "restock"),
        ("reason", "transfer_in"),
        ("reason", "PICK"),
        ("reason", None),
        ("location_code", "main"),
        ("sku", "wid-1"),
        ("note", "n" * 1001),
        ("surprise", 1),
    ]
    cases: list[tuple[dict[str, Any], tuple[Any, ...] | None]] = [
        (adjustment(**{field: value}), ("body", field)) for field, value in bad
    ]
    cases += [
        (without(adjustment(), field), ("body", field))
        for field in ("sku", "location_code", "delta", "reason")
    ]
    cases.append((adjustment(delta=0), None))  # a whole-body rule
    await all_rejected(client, db, stocked, ADJUST, cases)


async def test_every_reason_is_accepted(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    for reason in ("count", "damage", "pick", "return", "correction"):
        r = await client.post(ADJUST, json=adjustment(reason=reason), headers=stocked)
        assert r.status_code == 201, r.text
        assert r.json()["movement"]["reason"] == reason
    assert (await snapshot(db)).levels[(SKU, "MAIN")] == 5


async def test_adjustment_never_goes_below_zero(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    body = await rejected(
        client, db, stocked, ADJUST, adjustment(delta=-11), 409, "insufficient-stock"
    )
    assert "10" in body["detail"]
    # a level that never existed counts as zero
    await rejected(
        client, db, stocked, ADJUST, adjustment(sku="OTHER-1", delta=-1), 409, "insufficient-stock"
    )
    await rejected(
        client, db, stocked, ADJUST, adjustment(delta=-1_000_000), 409, "insufficient-stock"
    )
    # down to exactly zero is fine, one more is not
    r = await client.post(ADJUST, json=adjustment(delta=-10), headers=stocked)
    assert r.status_code == 201, r.text
    assert r.json()["stock"]["quantity"] == 0
    await rejected(client, db, stocked, ADJUST, adjustment(delta=-1), 409, "insufficient-stock")


async def test_adjustment_unknown_and_archived_references(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    body = await rejected(client, db, stocked, ADJUST, adjustment(sku="NOPE-1"), 422)
    assert error_locs(body) == [("body", "sku")]
    body = await rejected(client, db, stocked, ADJUST, adjustment(location_code="NOWHERE"), 422)
    assert error_locs(body) == [("body", "location_code")]
    await rejected(client, db, stocked, ADJUST, adjustment(sku="OLD-1"), 409, "product-archived")
    await rejected(
        client, db, stocked, ADJUST, adjustment(sku="OLD-1", delta=3), 409, "product-archived"
    )


# --- transfers -------------------------------------------------------------------------------


def transfer(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sku": SKU,
        "from_location": "MAIN",
        "to_location": "DOCK",
        "quantity": 3,
    }
    body.update(overrides)
    return body


async def test_bad_transfers_are_rejected(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], tuple[Any, ...] | None]] = [
        (transfer(quantity=q), ("body", "quantity")) for q in BAD_QUANTITIES
    ]
    cases += [
        (transfer(to_location="MAIN"), None),  # from and to must differ
        (transfer(to_location=" MAIN "), None),
        (transfer(from_location="dock"), ("body", "from_location")),
        (transfer(to_location=""), ("body", "to_location")),
        (transfer(sku="x"), ("body", "sku")),
        (transfer(surprise=1), ("body", "surprise")),
    ]
    cases += [
        (without(transfer(), field), ("body", field))
        for field in ("sku", "from_location", "to_location", "quantity")
    ]
    await all_rejected(client, db, stocked, TRANSFER, cases)


async def test_transfer_insufficient_stock_writes_neither_leg(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    await rejected(client, db, stocked, TRANSFER, transfer(quantity=11), 409, "insufficient-stock")
    # from a level that does not exist, into one that does not either
    await make_location(client, stocked, "YARD")
    await rejected(
        client,
        db,
        stocked,
        TRANSFER,
        transfer(sku="OTHER-1", from_location="YARD", quantity=1),
        409,
        "insufficient-stock",
    )
    await rejected(
        client,
        db,
        stocked,
        TRANSFER,
        transfer(to_location="YARD", quantity=1_000_000),
        409,
        "insufficient-stock",
    )


async def test_transfer_references(
    client: httpx.AsyncClient, db: Database, stocked: dict[str, str]
) -> None:
    for overrides, loc in [
        ({"sku": "NOPE-1"}, ("body", "sku")),
        ({"from_location": "NOWHERE"}, ("body", "from_location")),
        ({"to_location": "NOWHERE"}, ("body", "to_location")),
    ]:
        body = await rejected(client, db, stocked, TRANSFER, transfer(**overrides), 422)
        assert error_locs(body) == [loc], overrides
    await rejected(client, db, stocked, TRANSFER, transfer(sku="OLD-1"), 409, "product-archived")
