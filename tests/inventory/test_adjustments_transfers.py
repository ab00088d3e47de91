"""Inventory: adjustments, transfers and batches: what they answer, what they write, and one
audit job per accepted request."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from shared.db.database import Database
from tests.conftest import count
from tests.inventory.helpers import (
    ADJUST,
    BATCH,
    MOVEMENTS,
    TRANSFER,
    assert_ledger_consistent,
    inventory,
    levels,
    make_location,
    make_product,
    restock,
    snapshot,
)

MOVEMENT_FIELDS = {"id", "sku", "location_code", "delta", "reason", "reference", "created_at"}


@pytest.fixture
async def setup(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    for sku in ("AAA-1", "BBB-1", "CCC-1"):
        await make_product(client, admin, sku)
    await make_location(client, admin, "DOCK")
    await make_location(client, admin, "YARD")
    await restock(client, admin, "AAA-1", 10)
    return admin


async def audit_actions(db: Database) -> list[str]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload->>'action' AS action FROM jobs WHERE kind = 'audit'"
            " ORDER BY created_at, id"
        )
    return [r["action"] for r in rows]


async def test_adjustment_shape_and_effect(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    before = await snapshot(db)
    r = await client.post(
        ADJUST,
        json={
            "sku": "AAA-1",
            "location_code": "MAIN",
            "delta": -4,
            "reason": "damage",
            "note": "dropped",
        },
        headers=setup,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"movement", "stock", "audit_job"}
    assert set(body["movement"]) == MOVEMENT_FIELDS
    assert body["movement"]["delta"] == -4 and body["movement"]["reason"] == "damage"
    assert body["movement"]["sku"] == "AAA-1" and body["movement"]["location_code"] == "MAIN"
    assert body["stock"]["quantity"] == 6
    assert set(body["stock"]) == {"sku", "location_code", "quantity", "updated_at"}
    assert body["audit_job"]["status_url"] == f"/api/v1/jobs/{body['audit_job']['id']}"
    after = await snapshot(db)
    assert after.movements == before.movements + 1 and after.audit_jobs == before.audit_jobs + 1
    assert after.levels[("AAA-1", "MAIN")] == 6
    # a positive adjustment creates a level where there was none
    r = await client.post(
        ADJUST,
        json={"sku": "BBB-1", "location_code": "YARD", "delta": 3, "reason": "return"},
        headers=setup,
    )
    assert r.status_code == 201, r.text
    assert r.json()["stock"] == {**r.json()["stock"], "quantity": 3, "location_code": "YARD"}
    assert (await audit_actions(db))[-2:] == ["inventory.adjusted", "inventory.adjusted"]
    async with db.pool.acquire() as conn:
        note = await conn.fetchval(
            "SELECT note FROM movements WHERE id = $1", body["movement"]["id"]
        )
    assert note == "dropped"
    await assert_ledger_consistent(db)


async def test_transfer_moves_both_legs(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    before = await snapshot(db)
    r = await client.post(
        TRANSFER,
        json={"sku": "AAA-1", "from_location": "MAIN", "to_location": "DOCK", "quantity": 4},
        headers=setup,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"movements", "stock", "audit_job"}
    out, into = body["movements"]
    assert set(out) == MOVEMENT_FIELDS == set(into)
    assert (out["location_code"], out["delta"], out["reason"]) == ("MAIN", -4, "transfer_out")
    assert (into["location_code"], into["delta"], into["reason"]) == ("DOCK", 4, "transfer_in")
    assert out["created_at"] == into["created_at"]  # one transaction
    assert [(s["location_code"], s["quantity"]) for s in body["stock"]] == [
        ("MAIN", 6),
        ("DOCK", 4),
    ]
    uuid.UUID(body["audit_job"]["id"])
    after = await snapshot(db)
    assert after.movements == before.movements + 2
    assert after.audit_jobs == before.audit_jobs + 1  # a transfer is one audit entry
    assert (await audit_actions(db))[-1] == "inventory.transferred"
    view = (await client.get(inventory("AAA-1"), headers=setup)).json()
    assert view["on_hand"] == 10
    # all of it, back the other way, then from a level that is now empty
    r = await client.post(
        TRANSFER,
        json={"sku": "AAA-1", "from_location": "DOCK", "to_location": "MAIN", "quantity": 4},
        headers=setup,
    )
    assert r.status_code == 201, r.text
    assert [s["quantity"] for s in r.json()["stock"]] == [0, 10]
    r = await client.post(
        TRANSFER,
        json={"sku": "AAA-1", "from_location": "DOCK", "to_location": "MAIN", "quantity": 1},
        headers=setup,
    )
    assert r.status_code == 409
    assert await levels(db) == {("AAA-1", "MAIN"): 10}
    await assert_ledger_consistent(db)


async def test_batch_shape_and_effect(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    lines: list[dict[str, Any]] = [
        {"sku": "BBB-1", "quantity": 2, "location_code": "DOCK"},
        {"sku": "AAA-1", "quantity": 5, "reference": "own-ref", "note": "n"},
        {"sku": "BBB-1", "quantity": 3, "location_code": "DOCK"},  # same level twice
        {"sku": "CCC-1", "quantity": 1, "location_code": "YARD"},
    ]
    before = await snapshot(db)
    r = await client.post(BATCH, json={"lines": lines, "reference": "PO-9"}, headers=setup)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"movements", "stock", "audit_job"}
    moves = body["movements"]
    assert [(m["sku"], m["location_code"], m["delta"]) for m in moves] == [
        ("BBB-1", "DOCK", 2),
        ("AAA-1", "MAIN", 5),
        ("BBB-1", "DOCK", 3),
        ("CCC-1", "YARD", 1),
    ]
    assert all(set(m) == MOVEMENT_FIELDS and m["reason"] == "restock" for m in moves)
    assert [m["reference"] for m in moves] == ["PO-9", "own-ref", "PO-9", "PO-9"]
    assert [m["id"] for m in moves] == sorted(m["id"] for m in moves)
    assert sorted((s["sku"], s["location_code"], s["quantity"]) for s in body["stock"]) == [
        ("AAA-1", "MAIN", 15),
        ("BBB-1", "DOCK", 5),
        ("CCC-1", "YARD", 1),
    ]
    after = await snapshot(db)
    assert after.movements == before.movements + 4
    assert after.audit_jobs == before.audit_jobs + 1  # a batch is one audit entry
    assert (await audit_actions(db))[-1] == "inventory.restocked_batch"
    listed = (await client.get(MOVEMENTS, params={"sku": "BBB-1"}, headers=setup)).json()
    assert listed["items"] == [moves[0], moves[2]]
    await assert_ledger_consistent(db)


async def test_mixed_operations_keep_the_ledger(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    ops: list[tuple[str, dict[str, Any], int]] = [
        (TRANSFER, {"sku": "AAA-1", "from_location": "MAIN", "to_location": "YARD",
                    "quantity": 10}, 201),
        (ADJUST, {"sku": "AAA-1", "location_code": "MAIN", "delta": -1, "reason": "pick"}, 409),
        (ADJUST, {"sku": "AAA-1", "location_code": "YARD", "delta": -10, "reason": "count"},
         201),
        (ADJUST, {"sku": "AAA-1", "location_code": "YARD", "delta": 7, "reason": "correction"},
         201),
        (BATCH, {"lines": [{"sku": "AAA-1", "quantity": 1, "location_code": "YARD"}] * 3}, 201),
        (TRANSFER, {"sku": "AAA-1", "from_location": "YARD", "to_location": "MAIN",
                    "quantity": 11}, 409),
        (TRANSFER, {"sku": "AAA-1", "from_location": "YARD", "to_location": "MAIN",
                    "quantity": 10}, 201),
    ]  # fmt: skip
    for path, body, status in ops:
        r = await client.post(path, json=body, headers=setup)
        assert r.status_code == status, (body, r.text)
    assert await levels(db) == {("AAA-1", "MAIN"): 10}
    assert await count(db, "SELECT count(*) FROM movements") == 1 + 2 + 1 + 1 + 3 + 2
    assert await count(db, "SELECT sum(delta) FROM movements") == 10
    await assert_ledger_consistent(db)
