"""Idempotency-Key on the inventory POSTs (SPEC: Idempotency): a retried request is answered
with the first response and does nothing twice."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.db.database import Database
from tests.conftest import Env
from tests.inventory.helpers import (
    ADJUST,
    BATCH,
    LOCATIONS,
    PRODUCTS,
    RESTOCK,
    TRANSFER,
    assert_ledger_consistent,
    levels,
    make_location,
    make_product,
    problem,
    restock,
    snapshot,
)
from tests.waiting import eventually


@pytest.fixture
async def setup(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    await make_product(client, admin, "WID-1")
    await make_product(client, admin, "GIZ-1")
    await make_location(client, admin, "DOCK")
    await restock(client, admin, "WID-1", 50)
    return admin


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (RESTOCK, {"sku": "WID-1", "quantity": 5, "reference": "PO-1"}),
    (BATCH, {"lines": [{"sku": "WID-1", "quantity": 1}, {"sku": "GIZ-1", "quantity": 2}]}),
    (ADJUST, {"sku": "WID-1", "location_code": "MAIN", "delta": -3, "reason": "pick"}),
    (TRANSFER, {"sku": "WID-1", "from_location": "MAIN", "to_location": "DOCK", "quantity": 4}),
    (LOCATIONS, {"code": "YARD", "name": "Yard"}),
]


async def test_same_key_same_body_is_replayed_and_done_once(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    async def check(path: str, body: Any, key: str) -> None:
        headers = keyed(setup, key)
        first = await client.post(path, json=body, headers=headers)
        assert first.status_code == 201, (path, first.text)
        assert "idempotent-replayed" not in first.headers
        after_first = await snapshot(db)
        # the same JSON with its keys in another order and other white space is the same body
        shuffled = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
        for content in (json.dumps(body).encode(), shuffled, json.dumps(body).encode()):
            again = await client.post(
                path, content=content, headers={**headers, "Content-Type": "application/json"}
            )
            assert again.status_code == 201
            assert again.headers["idempotent-replayed"] == "true"
            assert again.headers["content-type"] == "application/json"
            assert again.content == first.content
        assert await snapshot(db) == after_first
        await assert_ledger_consistent(db)

    for i, (path, body) in enumerate(REQUESTS):
        await check(path, body, f"retry-me-{i}")


async def test_same_key_other_body_is_422(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    async def check(path: str, body: Any, key: str) -> None:
        headers = keyed(setup, key)
        assert (await client.post(path, json=body, headers=headers)).status_code == 201
        before = await snapshot(db)
        other = {**body, "note": "different"} if path != BATCH else {**body, "reference": "x"}
        problem(await client.post(path, json=other, headers=headers), 422, "idempotency-key-reused")
        # the same body on another endpoint is another request too
        other_path = RESTOCK if path != RESTOCK else ADJUST
        problem(
            await client.post(other_path, json=body, headers=headers), 422, "idempotency-key-reused"
        )
        assert await snapshot(db) == before
        # and the original is still replayed
        replay = await client.post(path, json=body, headers=headers)
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"

    for i, (path, body) in enumerate(REQUESTS[:4]):
        await check(path, body, f"k-{i}")


async def test_key_length(client: httpx.AsyncClient, setup: dict[str, str], db: Database) -> None:
    body = {"sku": "WID-1", "quantity": 1}
    before = await snapshot(db)
    problem(
        await client.post(RESTOCK, json=body, headers=keyed(setup, "k" * 256)),
        400,
        "invalid-idempotency-key",
    )
    problem(await client.post(RESTOCK, json=body, headers=keyed(setup, "")), 400)
    assert await snapshot(db) == before
    longest = keyed(setup, "k" * 255)
    first = await client.post(RESTOCK, json=body, headers=longest)
    assert first.status_code == 201
    replay = await client.post(RESTOCK, json=body, headers=longest)
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == first.content
    assert (await levels(db))[("WID-1", "MAIN")] == 51


async def test_keys_are_scoped_to_the_api_key(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database, make_key: Any
) -> None:
    other = await make_key("inventory:write", name="other")
    body = {"sku": "WID-1", "quantity": 2}
    mine = await client.post(RESTOCK, json=body, headers=keyed(setup, "shared-key"))
    theirs = await client.post(RESTOCK, json=body, headers=keyed(other, "shared-key"))
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["movement"]["id"] != theirs.json()["movement"]["id"]
    # each one's key replays its own answer; another body under the other's key still works
    replay = await client.post(RESTOCK, json=body, headers=keyed(other, "shared-key"))
    assert replay.content == theirs.content
    third = await make_key("inventory:write", name="third")
    other_body = {"sku": "GIZ-1", "quantity": 9}
    assert (
        await client.post(RESTOCK, json=other_body, headers=keyed(third, "shared-key"))
    ).status_code == 201
    assert await levels(db) == {("WID-1", "MAIN"): 54, ("GIZ-1", "MAIN"): 9}


async def test_domain_error_is_replayed_even_after_the_state_changed(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    take = {"sku": "GIZ-1", "location_code": "MAIN", "delta": -5, "reason": "pick"}
    headers = keyed(setup, "take-5")
    first = await client.post(ADJUST, json=take, headers=headers)
    body = problem(first, 409, "insufficient-stock")
    await restock(client, setup, "GIZ-1", 10)
    before = await snapshot(db)
    again = await client.post(ADJUST, json=take, headers=headers)
    assert again.status_code == 409
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json() == body
    assert await snapshot(db) == before
    # the same request under a new key does the work
    assert (
        await client.post(ADJUST, json=take, headers=keyed(setup, "take-5b"))
    ).status_code == 201
    assert (await levels(db))[("GIZ-1", "MAIN")] == 5


async def test_unknown_reference_is_replayed_too(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    body = {"sku": "NEW-1", "quantity": 3}
    first = await client.post(RESTOCK, json=body, headers=keyed(setup, "early"))
    problem(first, 422, "unknown-reference")
    await make_product(client, setup, "NEW-1")
    again = await client.post(RESTOCK, json=body, headers=keyed(setup, "early"))
    assert again.status_code == 422 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert ("NEW-1", "MAIN") not in await levels(db)


async def test_invalid_request_does_not_use_up_the_key(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    """A body that fails validation never ran: as with Stripe, nothing is stored under its
    key, so the corrected request can use it."""
    headers = keyed(setup, "fix-me")
    before = await snapshot(db)
    problem(await client.post(RESTOCK, json={"sku": "WID-1", "quantity": 0}, headers=headers), 422)
    assert await snapshot(db) == before
    fixed = await client.post(RESTOCK, json={"sku": "WID-1", "quantity": 1}, headers=headers)
    assert fixed.status_code == 201 and "idempotent-replayed" not in fixed.headers


async def test_replay_survives_archiving(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    body = {"sku": "GIZ-1", "quantity": 4}
    first = await client.post(RESTOCK, json=body, headers=keyed(setup, "before-archive"))
    assert first.status_code == 201
    assert (await client.delete(f"{PRODUCTS}/GIZ-1", headers=setup)).status_code == 204
    again = await client.post(RESTOCK, json=body, headers=keyed(setup, "before-archive"))
    assert again.status_code == 201 and again.content == first.content
    problem(await client.post(RESTOCK, json=body, headers=keyed(setup, "after")), 409)


async def test_key_expires_after_24_hours(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    headers = keyed(setup, "old-key")
    assert (
        await client.post(RESTOCK, json={"sku": "WID-1", "quantity": 1}, headers=headers)
    ).status_code == 201
    async with db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
            " WHERE key = 'old-key'"
        )
    # another body under the expired key is a new request
    r = await client.post(RESTOCK, json={"sku": "GIZ-1", "quantity": 2}, headers=headers)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    replay = await client.post(RESTOCK, json={"sku": "GIZ-1", "quantity": 2}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == r.content
    assert await levels(db) == {("WID-1", "MAIN"): 51, ("GIZ-1", "MAIN"): 2}


async def test_concurrent_same_key_does_the_work_once(
    client: httpx.AsyncClient, setup: dict[str, str], db: Database
) -> None:
    async def check(path: str, body: Any, key: str) -> None:
        before = await snapshot(db)
        headers = keyed(setup, key)
        results = await asyncio.gather(
            *(client.post(path, json=body, headers=headers) for _ in range(16))
        )
        done = [
            r for r in results if r.status_code == 201 and "idempotent-replayed" not in r.headers
        ]
        replayed = [r for r in results if r.headers.get("idempotent-replayed") == "true"]
        in_flight = [r for r in results if r.status_code == 409]
        assert len(done) == 1, (path, [r.status_code for r in results])
        assert len(done) + len(replayed) + len(in_flight) == 16
        assert all(r.content == done[0].content for r in replayed)
        for r in in_flight:
            problem(r, 409, "idempotency-key-in-flight")
        after = await snapshot(db)
        moved = len(done[0].json().get("movements", [None]))
        assert after.movements == before.movements + moved
        assert after.audit_jobs == before.audit_jobs + 1
        # a client told "in flight" retries until it gets the answer: the first one, replayed
        retried: list[httpx.Response] = []

        async def retry() -> None:
            async def answered() -> bool:
                r = await client.post(path, json=body, headers=headers)
                if r.status_code == 409 and r.json()["type"].endswith("/idempotency-key-in-flight"):
                    return False
                retried.append(r)
                return True

            await eventually(answered, what="an answer other than in-flight")

        await asyncio.gather(*(retry() for _ in in_flight))
        assert len(retried) == len(in_flight)
        for r in retried:
            assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"
            assert r.content == done[0].content
        assert await snapshot(db) == after
        await assert_ledger_consistent(db)

    for i, (path, body) in enumerate(REQUESTS[:4]):
        await check(path, body, f"race-{i}")


async def test_a_burst_of_keyed_failures_does_not_exhaust_the_pool(
    env: Env, admin: dict[str, str]
) -> None:
    """Remembering a failure under its key must not need a second pooled connection while the
    request still holds its first: a burst of such failures would hang the whole process."""
    settings = env.settings(db_pool_size=3)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            await make_product(c, admin, "EMPTY-1")
            take = {"sku": "EMPTY-1", "location_code": "MAIN", "delta": -1, "reason": "pick"}
            calls = asyncio.gather(
                *(c.post(ADJUST, json=take, headers=keyed(admin, f"pick-{i}")) for i in range(24))
            )
            try:
                results = await asyncio.wait_for(calls, timeout=15)
            except TimeoutError:
                raise AssertionError("24 keyed 409s at once hung a 3-connection pool") from None
            for r in results:
                problem(r, 409, "insufficient-stock")
            replay = await c.post(ADJUST, json=take, headers=keyed(admin, "pick-0"))
            assert replay.status_code == 409 and replay.headers["idempotent-replayed"] == "true"
