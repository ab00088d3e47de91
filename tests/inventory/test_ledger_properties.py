"""Property: over any sequence of restocks, adjustments, transfers and batches (some of them
invalid, some retried with their Idempotency-Key) on 2-3 SKUs at 2-3 locations, the levels
equal a plain Python model, every level equals the sum of its ledger, nothing is negative, a
rejected request changes nothing and a retried one does nothing twice.

Hypothesis drives a synchronous function; it runs in a worker thread and hands each scenario
to the test's event loop (where the app, its pool and the client live)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.db.database import Database
from tests.inventory.helpers import (
    ADJUST,
    BATCH,
    RESTOCK,
    TRANSFER,
    assert_ledger_consistent,
    make_location,
    make_product,
    snapshot,
)

SKUS = ["PROP-A", "PROP-B", "PROP-C"]
LOCATIONS = ["MAIN", "L-1", "L-2"]

T = TypeVar("T")
Op = tuple[Any, ...]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[tuple[Op, bool]]]:
    n_skus = draw(st.integers(2, 3))
    n_locations = draw(st.integers(2, 3))
    sku = st.integers(0, n_skus - 1)
    loc = st.integers(0, n_locations - 1)
    # small quantities, so that levels often hit zero exactly and requests often just miss
    op = st.one_of(
        st.tuples(st.just("restock"), sku, loc, st.integers(1, 5)),
        st.tuples(st.just("adjust"), sku, loc, st.integers(-6, 6).filter(bool)),
        st.tuples(st.just("transfer"), sku, loc, loc, st.integers(1, 6)),
        st.tuples(
            st.just("batch"),
            st.lists(st.tuples(sku, loc, st.integers(1, 3)), min_size=1, max_size=4),
            st.booleans(),  # poisoned: one line names an unknown SKU
        ),
        st.tuples(st.just("unknown"), sku, st.integers(1, 5)),
    )
    # each op with a flag: send it again under the same Idempotency-Key
    ops = draw(st.lists(st.tuples(op, st.booleans()), min_size=1, max_size=15))
    return n_skus, n_locations, ops


def request_for(op: Op) -> tuple[str, dict[str, Any]]:
    kind = op[0]
    if kind == "restock":
        _, s, loc, qty = op
        return RESTOCK, {"sku": SKUS[s], "location_code": LOCATIONS[loc], "quantity": qty}
    if kind == "adjust":
        _, s, loc, delta = op
        return ADJUST, {
            "sku": SKUS[s],
            "location_code": LOCATIONS[loc],
            "delta": delta,
            "reason": "correction",
        }
    if kind == "transfer":
        _, s, a, b, qty = op
        return TRANSFER, {
            "sku": SKUS[s],
            "from_location": LOCATIONS[a],
            "to_location": LOCATIONS[b],
            "quantity": qty,
        }
    if kind == "batch":
        _, lines, poisoned = op
        body = [
            {"sku": SKUS[s], "location_code": LOCATIONS[loc], "quantity": qty}
            for s, loc, qty in lines
        ]
        if poisoned:
            body.insert(len(body) // 2, {"sku": "NOPE-1", "quantity": 1})
        return BATCH, {"lines": body}
    _, s, qty = op  # "unknown": a location that does not exist
    return RESTOCK, {"sku": SKUS[s], "location_code": "GHOST", "quantity": qty}


def apply(model: Counter[tuple[str, str]], op: Op) -> tuple[int, int]:
    """What the model says: ``(status, movements written)``; updates ``model`` on success."""
    kind = op[0]
    if kind == "restock":
        _, s, loc, qty = op
        model[SKUS[s], LOCATIONS[loc]] += qty
        return 201, 1
    if kind == "adjust":
        _, s, loc, delta = op
        if model[SKUS[s], LOCATIONS[loc]] + delta < 0:
            return 409, 0
        model[SKUS[s], LOCATIONS[loc]] += delta
        return 201, 1
    if kind == "transfer":
        _, s, a, b, qty = op
        if a == b:
            return 422, 0
        if model[SKUS[s], LOCATIONS[a]] < qty:
            return 409, 0
        model[SKUS[s], LOCATIONS[a]] -= qty
        model[SKUS[s], LOCATIONS[b]] += qty
        return 201, 2
    if kind == "batch":
        _, lines, poisoned = op
        if poisoned:
            return 422, 0
        for s, loc, qty in lines:
            model[SKUS[s], LOCATIONS[loc]] += qty
        return 201, len(lines)
    return 422, 0


def check_response(model: Counter[tuple[str, str]], body: dict[str, Any]) -> None:
    """The levels a successful response reports are the model's (nothing else touched them)."""
    stock = body["stock"] if isinstance(body["stock"], list) else [body["stock"]]
    for level in stock:
        assert level["quantity"] == model[level["sku"], level["location_code"]], body


async def test_ledger_matches_a_model_over_random_operations(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    for sku in SKUS:
        await make_product(client, admin, sku)
    for code in LOCATIONS[1:]:
        await make_location(client, admin, code)
    loop = asyncio.get_running_loop()
    examples = 0

    def on_loop(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    async def run(ops: list[tuple[Op, bool]]) -> None:
        async with db.pool.acquire() as conn:
            for table in ("stock_levels", "movements", "idempotency_keys", "jobs"):
                await conn.execute(f"DELETE FROM {table}")  # noqa: S608
        model: Counter[tuple[str, str]] = Counter()
        accepted = movements = 0
        before = await snapshot(db)
        for op, retried in ops:
            path, body = request_for(op)
            key = {"Idempotency-Key": uuid.uuid4().hex} if retried else {}
            r = await client.post(path, json=body, headers={**admin, **key})
            status, written = apply(model, op)
            assert r.status_code == status, (op, r.text)
            after = await snapshot(db)
            if status == 201:
                accepted += 1
                movements += written
                check_response(model, r.json())
            else:
                # a refusal writes nothing but, under a key, the refusal itself to replay
                stored = 1 if key and not r.json()["type"].endswith("/validation-error") else 0
                assert after == replace(
                    before, idempotency_keys=before.idempotency_keys + stored
                ), op
            assert {k: v for k, v in after.levels.items() if v} == +model, op
            assert all(v >= 0 for v in after.levels.values())
            if retried:
                again = await client.post(path, json=body, headers={**admin, **key})
                assert again.status_code == r.status_code
                assert again.content == r.content
                # a body that failed validation never ran: nothing was stored to replay
                ran = not r.json().get("type", "").endswith("/validation-error")
                assert again.headers.get("idempotent-replayed") == ("true" if ran else None)
                assert await snapshot(db) == after
            before = after
        final = await snapshot(db)
        assert final.movements == movements
        assert final.audit_jobs == accepted
        await assert_ledger_consistent(db)

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(scenarios())
    def prop(scenario: tuple[int, int, list[tuple[Op, bool]]]) -> None:
        nonlocal examples
        examples += 1
        on_loop(run(scenario[2]))

    await asyncio.to_thread(prop)
    assert examples >= 25
