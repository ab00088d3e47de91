"""Inventory under concurrency: 64 clients at once on a handful of hot SKUs, through the real
app and a real PostgreSQL. No update lost, no double effect, no level below zero, every level
equal to its ledger, exactly one audit job per accepted mutation, no deadlock (no 500)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from shared.db.database import Database
from tests.conftest import Env, KeyFactory, count
from tests.inventory.helpers import (
    ADJUST,
    BATCH,
    RESTOCK,
    TRANSFER,
    assert_ledger_consistent,
    levels,
    make_location,
    make_product,
    restock,
    snapshot,
)
from tests.waiting import eventually

CLIENTS = 64
ROUNDS = 30


@pytest.fixture
async def wide(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a pool of 20 connections (64 clients still queue for them), low-stock
    webhooks on (so that their check runs inside the racing transactions; nothing delivers
    them here, and they go to a queue of their own), 500s returned as responses so that they
    can be counted."""
    settings = env.settings(
        db_pool_size=20,
        queue_name=f"{env.queue_name}-inventory",
        webhook_url="http://127.0.0.1:9/stock-alerts",
        webhook_secret="test-secret",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://stockroom.test", timeout=120
        ) as c:
            yield c


def slug(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


def assert_serial(accepted: list[tuple[int, int]], start: int = 0) -> None:
    """``(delta, level after)`` of every accepted change to one level, in any order: sorted
    by the level each one saw, each must be the previous level plus its own delta. A lost
    update or a double count breaks the chain."""
    increasing = all(delta > 0 for delta, _ in accepted)
    chain = sorted(accepted, key=lambda pair: pair[1], reverse=not increasing)
    level = start
    for delta, after in chain:
        assert after == level + delta, (level, delta, after)
        level = after


# --- hot SKUs: restocks, replays, reused keys ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    api: int
    key: str | None
    body: dict[str, Any]
    kind: str  # "plain" | "keyed" | "reuse"
    response: httpx.Response


async def test_restock_storm_on_hot_skus(
    wide: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory, db: Database
) -> None:
    skus = [f"HOT-{i}" for i in range(4)]
    codes = ["MAIN", "DOCK"]
    for sku in skus:
        await make_product(wide, admin, sku)
    await make_location(wide, admin, "DOCK")
    apis = [admin, await make_key("inventory:write", name="scanner")]
    before = await snapshot(db)

    # 150 shared Idempotency-Keys, each with its own body, used by whoever draws them
    plan = random.Random(1234)
    key_bodies = {
        f"key-{k}": {
            "sku": plan.choice(skus),
            "location_code": plan.choice(codes),
            "quantity": plan.randint(1, 9),
            "reference": f"K{k}",
        }
        for k in range(150)
    }
    sent: list[Sent] = []

    async def post(api: int, key: str | None, body: dict[str, Any], kind: str) -> httpx.Response:
        headers = {**apis[api], **({"Idempotency-Key": key} if key else {})}
        r = await wide.post(RESTOCK, json=body, headers=headers)
        sent.append(Sent(api, key, body, kind, r))
        return r

    async def client(w: int) -> None:
        rng = random.Random(w)
        for _ in range(ROUNDS):
            if rng.random() < 0.6:
                body = {
                    "sku": rng.choice(skus),
                    "location_code": rng.choice(codes),
                    "quantity": rng.randint(1, 9),
                }
                await post(rng.randrange(2), None, body, "plain")
                continue
            key = rng.choice(list(key_bodies))
            api = int(key.split("-")[1]) % 2
            answered: list[httpx.Response] = []

            async def settled(key: str = key, api: int = api, box: list[Any] = answered) -> bool:
                r = await post(api, key, key_bodies[key], "keyed")
                if r.status_code == 409 and slug(r) == "idempotency-key-in-flight":
                    return False
                box.append(r)
                return True

            await eventually(settled, timeout=60, what=f"an answer for {key}")
            if answered[0].status_code == 201 and rng.random() < 0.3:
                other = {**key_bodies[key], "quantity": key_bodies[key]["quantity"] + 1}

                async def refused(key: str = key, api: int = api, other: Any = other) -> bool:
                    r = await post(api, key, other, "reuse")
                    return not (r.status_code == 409 and slug(r) == "idempotency-key-in-flight")

                await eventually(refused, timeout=60, what=f"a refusal for {key}")

    await asyncio.gather(*(client(w) for w in range(CLIENTS)))

    statuses = Counter((s.kind, s.response.status_code) for s in sent)
    allowed = {("plain", 201), ("keyed", 201), ("keyed", 409), ("reuse", 409), ("reuse", 422)}
    assert set(statuses) <= allowed, statuses
    assert statuses["plain", 201] > 1000 and statuses["reuse", 422] > 50
    assert len(sent) >= CLIENTS * ROUNDS
    for s in sent:
        if s.response.status_code == 409:
            assert slug(s.response) == "idempotency-key-in-flight"
        if s.response.status_code == 422:
            assert slug(s.response) == "idempotency-key-reused"

    # per key: one original, every other 201 is its replay, byte for byte
    accepted: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (request, response body)
    by_key: dict[str, list[httpx.Response]] = defaultdict(list)
    for s in sent:
        if s.kind == "plain":
            assert "idempotent-replayed" not in s.response.headers
            accepted.append((s.body, s.response.json()))
        elif s.kind == "keyed" and s.response.status_code == 201:
            by_key[s.key or ""].append(s.response)
    assert len(by_key) > 100
    for key, responses in by_key.items():
        originals = [r for r in responses if "idempotent-replayed" not in r.headers]
        assert len(originals) == 1, key
        assert all(r.content == originals[0].content for r in responses), key
        accepted.append((key_bodies[key], originals[0].json()))

    # the database agrees with what was accepted, and nothing more
    expected: Counter[tuple[str, str]] = Counter()
    chains: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for request, response in accepted:
        level = (request["sku"], request["location_code"])
        expected[level] += request["quantity"]
        assert response["movement"]["delta"] == request["quantity"]
        chains[level].append((request["quantity"], response["stock"]["quantity"]))
    assert await levels(db) == dict(expected)
    for chain in chains.values():
        assert_serial(chain)
    after = await snapshot(db)
    assert after.movements - before.movements == len(accepted)
    assert after.audit_jobs - before.audit_jobs == len(accepted)
    # each accepted restock names its own audit job, and that job exists
    job_ids = {response["audit_job"]["id"] for _, response in accepted}
    assert len(job_ids) == len(accepted)
    assert await count(db, "SELECT count(*) FROM jobs WHERE id::text = ANY($1)", list(job_ids)) == (
        len(accepted)
    )
    await assert_ledger_consistent(db)
    for sku in skus:
        product = (await wide.get(f"/api/v1/catalog/products/{sku}", headers=admin)).json()
        assert product["on_hand"] == sum(q for (s, _), q in expected.items() if s == sku)


# --- racing to zero --------------------------------------------------------------------------


@pytest.mark.parametrize(("stock", "take"), [(100, 7), (64, 1), (50, 3)])
async def test_adjustments_racing_to_zero(
    wide: httpx.AsyncClient, admin: dict[str, str], db: Database, stock: int, take: int
) -> None:
    await make_product(wide, admin, "RACE-1", reorder_point=5)
    await restock(wide, admin, "RACE-1", stock)
    before = await snapshot(db)
    body = {"sku": "RACE-1", "location_code": "MAIN", "delta": -take, "reason": "pick"}
    attempts = 2 * CLIENTS
    results = await asyncio.gather(
        *(wide.post(ADJUST, json=body, headers=admin) for _ in range(attempts))
    )
    winners = [r for r in results if r.status_code == 201]
    losers = [r for r in results if r.status_code != 201]
    assert len(winners) == stock // take
    assert all(r.status_code == 409 and slug(r) == "insufficient-stock" for r in losers)
    assert_serial([(-take, r.json()["stock"]["quantity"]) for r in winners], start=stock)
    assert await levels(db) == ({("RACE-1", "MAIN"): stock % take} if stock % take else {})
    after = await snapshot(db)
    assert after.movements - before.movements == len(winners)
    assert after.audit_jobs - before.audit_jobs == len(winners)
    await assert_ledger_consistent(db)
    # on_hand crossed the reorder point (5) once, so exactly one low-stock alert
    async with db.pool.acquire() as conn:
        alerts = await conn.fetch("SELECT payload FROM jobs WHERE kind = 'webhook'")
    assert len(alerts) == 1
    data = alerts[0]["payload"]["data"]
    assert data["sku"] == "RACE-1" and data["reorder_point"] == 5
    assert 5 - take < data["on_hand"] <= 5


async def test_restocks_and_adjustments_interleaved(
    wide: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """Takes race with restocks on one level: whatever wins, the level is what the ledger
    says and never went below zero."""
    await make_product(wide, admin, "MIX-1")
    rng = random.Random(7)
    plan: list[tuple[str, dict[str, Any]]] = []
    for _ in range(4 * CLIENTS):
        if rng.random() < 0.4:
            plan.append((RESTOCK, {"sku": "MIX-1", "quantity": rng.randint(1, 10)}))
        else:
            delta = -rng.randint(1, 8)
            plan.append(
                (
                    ADJUST,
                    {"sku": "MIX-1", "location_code": "MAIN", "delta": delta, "reason": "pick"},
                )
            )
    results = await asyncio.gather(*(wide.post(p, json=b, headers=admin) for p, b in plan))
    net = 0
    accepted = 0
    for (path, body), r in zip(plan, results, strict=True):
        if r.status_code == 201:
            net += body.get("quantity", body.get("delta", 0))
            accepted += 1
            assert r.json()["stock"]["quantity"] >= 0
        else:
            assert r.status_code == 409 and slug(r) == "insufficient-stock", r.text
            assert path == ADJUST
    assert 0 < accepted < len(plan)
    assert (await levels(db)).get(("MIX-1", "MAIN"), 0) == net
    assert await count(db, "SELECT count(*) FROM movements") == accepted + 0
    await assert_ledger_consistent(db)


# --- transfers and batches crossing each other -----------------------------------------------


async def test_crossing_transfers_and_batches(
    wide: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """A→B with B→A, batches over the same SKUs in opposite orders, and transfers into levels
    that do not exist yet while batches create them: no deadlock, no partial effect."""
    await make_location(wide, admin, "DOCK")
    await make_location(wide, admin, "YARD")
    hot = [f"X-{i}" for i in range(4)]
    fresh = [f"F-{i}" for i in range(8)]
    for sku in hot:
        await make_product(wide, admin, sku)
        await restock(wide, admin, sku, 300)
        await restock(wide, admin, sku, 300, "DOCK")
    for sku in fresh:
        await make_product(wide, admin, sku)
        await restock(wide, admin, sku, 30, "YARD")  # nothing at MAIN or DOCK yet
    initial = {sku: (600 if sku in hot else 30) for sku in hot + fresh}
    before = await snapshot(db)

    rng = random.Random(99)
    plan: list[tuple[str, dict[str, Any]]] = []
    for _ in range(8 * CLIENTS):
        roll = rng.random()
        if roll < 0.3:
            a, b = rng.sample(["MAIN", "DOCK"], 2)
            plan.append(
                (
                    TRANSFER,
                    {"sku": rng.choice(hot), "from_location": a, "to_location": b,
                     "quantity": rng.randint(1, 60)},
                )
            )  # fmt: skip
        elif roll < 0.5:
            plan.append(
                (
                    TRANSFER,
                    {"sku": rng.choice(fresh), "from_location": "YARD",
                     "to_location": rng.choice(["MAIN", "DOCK"]), "quantity": rng.randint(1, 4)},
                )
            )  # fmt: skip
        elif roll < 0.85:
            lines = [
                {"sku": sku, "quantity": rng.randint(1, 5),
                 "location_code": rng.choice(["MAIN", "DOCK"])}
                for sku in rng.sample(hot, 3)
            ]  # fmt: skip
            f = rng.choice(fresh)
            lines += [
                {"sku": f, "quantity": 1, "location_code": "MAIN"},
                {"sku": f, "quantity": 1, "location_code": "YARD"},
            ]
            if rng.random() < 0.5:
                lines.reverse()
            plan.append((BATCH, {"lines": lines}))
        else:
            plan.append(
                (
                    ADJUST,
                    {"sku": rng.choice(hot), "location_code": rng.choice(["MAIN", "DOCK"]),
                     "delta": -rng.randint(1, 40), "reason": "pick"},
                )
            )  # fmt: skip

    semaphore = asyncio.Semaphore(CLIENTS)

    async def run(path: str, body: dict[str, Any]) -> httpx.Response:
        async with semaphore:
            return await wide.post(path, json=body, headers=admin)

    results = await asyncio.gather(*(run(p, b) for p, b in plan))
    statuses = Counter(r.status_code for r in results)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] > 300

    on_hand = dict(initial)
    movements = transfers = 0
    for (path, body), r in zip(plan, results, strict=True):
        if r.status_code == 409:
            assert slug(r) == "insufficient-stock" and path in (TRANSFER, ADJUST), r.text
            continue
        moved = r.json().get("movements") or [r.json()["movement"]]
        movements += len(moved)
        if path == TRANSFER:
            transfers += 1
            assert [m["delta"] for m in moved] == [-body["quantity"], body["quantity"]]
        elif path == BATCH:
            assert len(moved) == len(body["lines"])
            for line in body["lines"]:
                on_hand[line["sku"]] += line["quantity"]
        else:
            on_hand[body["sku"]] += body["delta"]
    assert transfers > 50
    after = await snapshot(db)
    assert after.movements - before.movements == movements
    assert after.audit_jobs - before.audit_jobs == statuses[201]
    assert await count(db, "SELECT count(*) FROM movements WHERE reason = 'transfer_out'") == (
        transfers
    )
    assert await count(db, "SELECT count(*) FROM movements WHERE reason = 'transfer_in'") == (
        transfers
    )
    totals: Counter[str] = Counter()
    for (sku, _), quantity in after.levels.items():
        totals[sku] += quantity
    assert dict(totals) == on_hand  # transfers conserve, batches and adjustments add up
    await assert_ledger_consistent(db)


async def test_transfers_into_new_levels_while_batches_create_them(
    wide: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """The level a transfer goes to does not exist yet; a batch creates it and also touches
    the transfer's source. Each must take the two levels in the same order, or they deadlock
    (PostgreSQL then aborts one: a 500)."""
    await make_location(wide, admin, "YARD")  # a higher id than MAIN: locked after it
    rounds, skus_per_round = 5, 4
    results: list[httpx.Response] = []
    for round_ in range(rounds):
        skus = [f"NEW-{round_}-{i}" for i in range(skus_per_round)]
        for sku in skus:
            await make_product(wide, admin, sku)
            await restock(wide, admin, sku, 100, "YARD")
        calls = []
        for sku in skus:
            for _ in range(3):
                calls.append(
                    wide.post(
                        TRANSFER,
                        json={"sku": sku, "from_location": "YARD", "to_location": "MAIN",
                              "quantity": 1},
                        headers=admin,
                    )
                )  # fmt: skip
                lines = [
                    {"sku": sku, "quantity": 1, "location_code": "MAIN"},
                    {"sku": sku, "quantity": 1, "location_code": "YARD"},
                ]
                calls.append(wide.post(BATCH, json={"lines": lines}, headers=admin))
        results += await asyncio.gather(*calls)
    assert Counter(r.status_code for r in results) == {201: len(results)}
    expected = {}
    for round_ in range(rounds):
        for i in range(skus_per_round):
            expected[(f"NEW-{round_}-{i}", "MAIN")] = 3 + 3
            expected[(f"NEW-{round_}-{i}", "YARD")] = 100 - 3 + 3
    assert await levels(db) == expected
    await assert_ledger_consistent(db)


# --- one lock order for stock levels (shared.inventory.service.lock_order) --------------------


async def _held_level(db: Database, sku: str, code: str) -> Any:
    """A transaction (returned, to end) holding the level of ``sku`` at ``code`` locked."""
    conn = await db.pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute(
        "SELECT 1 FROM stock_levels s JOIN products p ON p.id = s.product_id"
        " JOIN locations l ON l.id = s.location_id"
        " WHERE p.sku = $1 AND l.code = $2 FOR UPDATE OF s",
        sku,
        code,
    )

    async def release() -> None:
        await tx.commit()
        await db.pool.release(conn)

    return release


async def _locked(db: Database, sku: str, code: str) -> bool:
    async with db.pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "SELECT 1 FROM stock_levels s JOIN products p ON p.id = s.product_id"
                " JOIN locations l ON l.id = s.location_id"
                " WHERE p.sku = $1 AND l.code = $2 FOR UPDATE OF s NOWAIT",
                sku,
                code,
            )
        except asyncpg.LockNotAvailableError:
            return True
    return False


async def _waiting_on_a_lock(db: Database) -> bool:
    async with db.pool.acquire() as conn:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    return bool(waiting)


async def test_batches_and_transfers_lock_levels_by_sku_then_location_code(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """The order restocks grouped into one commit lock in (they are put in order before their
    SKUs are resolved): a batch or a transfer blocked on its first level in that order holds
    none of the others, whatever the products' and locations' ids."""
    for sku in ("ORD-B", "ORD-A"):  # ORD-B gets the lower id
        await make_product(client, admin, sku)
    for code in ("ORD-Y", "ORD-X"):  # likewise ORD-Y
        await make_location(client, admin, code)
    for sku, code in (("ORD-B", "MAIN"), ("ORD-A", "MAIN"), ("ORD-A", "ORD-Y"), ("ORD-A", "ORD-X")):
        await restock(client, admin, sku, 10, code)

    async def held_while(path: str, body: dict[str, Any], first: tuple[str, str]) -> list[bool]:
        """Whether each other level of the request is locked while it waits on ``first``."""
        release = await _held_level(db, *first)
        try:
            request = asyncio.create_task(client.post(path, json=body, headers=admin))
            await eventually(lambda: _waiting_on_a_lock(db), what="the request to wait")
            others = [
                (line["sku"], line.get("location_code", "MAIN")) for line in body.get("lines", [])
            ] or [(body["sku"], body["from_location"]), (body["sku"], body["to_location"])]
            held = [await _locked(db, *level) for level in others if level != first]
        finally:
            await release()
        assert (await request).status_code == 201
        return held

    lines = [{"sku": "ORD-B", "quantity": 1}, {"sku": "ORD-A", "quantity": 1}]
    assert await held_while(BATCH, {"lines": lines}, ("ORD-A", "MAIN")) == [False]
    move = {"sku": "ORD-A", "from_location": "ORD-Y", "to_location": "ORD-X", "quantity": 1}
    assert await held_while(TRANSFER, move, ("ORD-A", "ORD-X")) == [False]
    await assert_ledger_consistent(db)
