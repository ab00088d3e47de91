"""``POST /inventory/restock`` in one statement (``shared.idempotency.at_once``): the happy
path is a single round trip; its answer is the model's; anything else falls back to the
general way, which the other inventory tests hold to SPEC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from shared import idempotency
from shared.auth.keys import parse_token
from shared.db.database import Database
from shared.inventory import service
from shared.inventory.schemas import JobLink, Movement, RestockLine, RestockResult, StockLevel
from tests.inventory.helpers import (
    RESTOCK,
    assert_ledger_consistent,
    levels,
    make_product,
    snapshot,
)
from tests.waiting import eventually, holds


@pytest.fixture
async def statements(app: Any) -> AsyncIterator[list[str]]:
    """Every statement the app's pool connections send while the test runs."""
    sent: list[str] = []

    def record(query: Any) -> None:
        sent.append(query.query)

    db = app.state.stockroom.db

    async def every_connection(action: Any) -> None:
        # all of them at once: every connection a request may get, parked or the pool's
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(app.state.stockroom.settings.db_pool_size):
                action(await stack.enter_async_context(db.acquire()))

    await every_connection(lambda conn: conn.add_query_logger(record))
    yield sent
    await every_connection(lambda conn: conn.remove_query_logger(record))


async def settled(sent: list[str]) -> list[str]:
    # asyncpg calls query loggers with call_soon: let them run
    await asyncio.sleep(0)
    return list(sent)


async def cleared(sent: list[str]) -> None:
    """Forget what was sent so far (the test's set-up)."""
    await settled(sent)
    sent.clear()


async def test_a_keyed_restock_is_one_statement(
    client: httpx.AsyncClient, admin: dict[str, str], statements: list[str]
) -> None:
    await make_product(client, admin, "ONE-1")
    await cleared(statements)
    r = await client.post(
        RESTOCK, json={"sku": "ONE-1", "quantity": 3}, headers={**admin, "Idempotency-Key": "k1"}
    )
    assert r.status_code == 201, r.text
    sent = await settled(statements)
    assert len(sent) == 1, sent
    assert "idempotency_keys" in sent[0] and "stock_levels" in sent[0]
    statements.clear()
    # without a key too
    r = await client.post(RESTOCK, json={"sku": "ONE-1", "quantity": 3}, headers=admin)
    assert r.status_code == 201
    assert len(await settled(statements)) == 1
    statements.clear()
    # a replay: the statement writes nothing, and the general way answers
    again = await client.post(
        RESTOCK, json={"sku": "ONE-1", "quantity": 3}, headers={**admin, "Idempotency-Key": "k1"}
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert len(await settled(statements)) > 1


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"reference": 'PO "7" \\ é\n\x01 😀', "note": "a note"},
        {"reference": "x" * 10, "location_code": "MAIN"},
    ],
)
async def test_the_answer_is_the_models(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database, extra: dict[str, Any]
) -> None:
    await make_product(client, admin, "ANS-1")
    body = {"sku": "ANS-1", "quantity": 7, **extra}
    r = await client.post(RESTOCK, json=body, headers={**admin, "Idempotency-Key": "ans"})
    assert r.status_code == 201, r.text
    async with db.pool.acquire() as conn:
        moved = await conn.fetchrow("SELECT id, created_at, reference FROM movements")
        level = await conn.fetchrow("SELECT quantity, updated_at FROM stock_levels")
        job = await conn.fetchrow(
            "SELECT id, payload FROM jobs WHERE payload->>'action' = 'inventory.restocked'"
        )
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'admin'")
    line = RestockLine.model_validate(body)
    expected = RestockResult(
        movement=Movement(
            id=moved["id"],
            sku=line.sku,
            location_code=line.location_code,
            delta=line.quantity,
            reason="restock",
            reference=line.reference,
            created_at=moved["created_at"],
        ),
        stock=StockLevel(
            sku=line.sku,
            location_code=line.location_code,
            quantity=level["quantity"],
            updated_at=level["updated_at"],
        ),
        audit_job=JobLink.for_job(job["id"]),
    )
    assert r.content == expected.model_dump_json().encode()
    assert r.headers["content-type"] == "application/json"
    assert moved["reference"] == line.reference
    # the audit event names the caller and the movement, as every other event does
    assert job["payload"]["actor"] == {"key_id": str(key_id), "name": "admin"}
    assert job["payload"]["payload"]["movement_id"] == moved["id"]
    assert job["payload"]["payload"]["note"] == line.note


async def test_a_record_committed_after_the_snapshot_undoes_the_statement(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """The statement's snapshot predates its writes; a record of the same key committed in
    between (by a request that, unlike this one, took no lock: the widest window) meets the
    key's unique index: the whole statement is undone and ``None`` sends the caller the
    general way, which replays that record."""
    await make_product(client, admin, "RACE-1")
    material = parse_token(admin["Authorization"].removeprefix("Bearer "))
    assert material is not None
    line = RestockLine(sku="RACE-1", quantity=5)
    before = await snapshot(db)
    async with db.pool.acquire() as holder, db.pool.acquire() as conn:
        key_id = await holder.fetchval("SELECT id FROM api_keys WHERE name = 'admin'")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO idempotency_keys (api_key_id, key, fingerprint, status_code, headers,"
            " body) VALUES ($1, 'race', '\\x00', 201, '{}', '\\x7b7d')",
            key_id,
        )
        run = asyncio.create_task(
            idempotency.run_at_once(
                conn.fetchrow,
                service.RESTOCK_AT_ONCE,
                service.RESTOCK_AT_ONCE.params(line, None, 5),
                material,
                "race",
                b"\x01",
            )
        )

        async def blocked_on_the_key() -> bool:
            waiting = await holder.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
            )
            return bool(waiting == "Lock")

        await eventually(blocked_on_the_key)
        await tx.commit()
        assert await run is None
    after = await snapshot(db)
    assert (after.levels, after.movements, after.jobs) == (
        before.levels,
        before.movements,
        before.jobs,
    )


# --- the lane: the statement served before the framework's stack (api.lanes) ----------------

ORIGIN = {"Origin": "https://erp.example"}  # the lane leaves such requests to the framework


def _shape(value: Any) -> Any:
    """A JSON value with its leaves reduced to their types: what two answers share."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


async def test_the_lane_answers_as_the_framework_does(
    client: httpx.AsyncClient, admin: dict[str, str], statements: list[str]
) -> None:
    await make_product(client, admin, "LANE-1")
    body = {"sku": "LANE-1", "quantity": 2, "reference": "PO-1"}
    await cleared(statements)
    lane = await client.post(RESTOCK, json=body, headers={**admin, "Idempotency-Key": "l1"})
    framework = await client.post(
        RESTOCK, json=body, headers={**admin, **ORIGIN, "Idempotency-Key": "f1"}
    )
    assert (lane.status_code, framework.status_code) == (201, 201), (lane.text, framework.text)
    # both the single statement: the framework tries it as the lane does
    assert (await settled(statements)).count(service.RESTOCK_AT_ONCE.sql) == 2
    ignore = {"x-request-id", "ratelimit", "ratelimit-policy"}  # outside the lane (api.ratelimit)
    assert [(k, v) for k, v in lane.headers.items() if k not in ignore] == [
        ("content-length", str(len(lane.content))),
        ("content-type", "application/json"),
    ]
    assert sorted(lane.headers) == sorted(framework.headers)
    assert framework.headers["content-type"] == lane.headers["content-type"]
    assert _shape(lane.json()) == _shape(framework.json())
    # each key replays its first answer byte for byte, whichever way the retry comes
    for key, first in (("l1", lane), ("f1", framework)):
        for extra in ({}, ORIGIN):
            again = await client.post(
                RESTOCK, json=body, headers={**admin, **extra, "Idempotency-Key": key}
            )
            assert again.status_code == 201
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == first.content


async def test_a_request_the_lane_hands_over_runs_the_statement_once(
    client: httpx.AsyncClient, admin: dict[str, str], statements: list[str], db: Database
) -> None:
    await make_product(client, admin, "LANE-2")
    before = await snapshot(db)
    await cleared(statements)
    # an unknown SKU: the statement writes nothing, the general way answers 422
    r = await client.post(
        RESTOCK, json={"sku": "NOPE", "quantity": 1}, headers={**admin, "Idempotency-Key": "u"}
    )
    assert r.status_code == 422, r.text
    sent = await settled(statements)
    assert sent.count(service.RESTOCK_AT_ONCE.sql) == 1, sent
    assert len(sent) > 1  # and the general way ran
    after = await snapshot(db)
    assert (after.levels, after.movements) == (before.levels, before.movements)


async def test_a_body_of_unknown_length_goes_to_the_framework(
    client: httpx.AsyncClient, admin: dict[str, str], statements: list[str]
) -> None:
    """No Content-Length (chunked): the lane does not read it; the framework, under its body
    limit, serves the request, the single statement first."""
    await make_product(client, admin, "LANE-3")
    await cleared(statements)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sku": "LANE-3", '
        yield b'"quantity": 4}'

    r = await client.post(
        RESTOCK,
        content=chunks(),
        headers={**admin, "Content-Type": "application/json", "Idempotency-Key": "c"},
    )
    assert r.status_code == 201, r.text
    assert "content-length" not in r.request.headers
    assert r.json()["stock"]["quantity"] == 4
    assert (await settled(statements)).count(service.RESTOCK_AT_ONCE.sql) == 1


async def test_a_client_gone_mid_body_is_answered_by_the_framework(
    app: Any, client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """What arrived before the disconnect parses as a whole restock: it must not count."""
    await make_product(client, admin, "LANE-4")
    before = await snapshot(db)
    part = b'{"sku": "LANE-4", "quantity": 1}'
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": part, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": RESTOCK,
        "raw_path": RESTOCK.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"stockroom.test"),
            (b"authorization", admin["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(part) + 10).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("stockroom.test", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 400
    after = await snapshot(db)
    assert (after.levels, after.movements, after.jobs) == (
        before.levels,
        before.movements,
        before.jobs,
    )


# --- restocks waiting for a connection commit together (Database.fetchrow's group commit) ----


def _groups_run() -> float:
    return REGISTRY.get_sample_value("stockroom_db_group_size_count") or 0.0


async def test_restocks_queued_together_commit_as_one_group_each_with_its_own_answer(
    app: Any, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """While every connection is taken, restocks queue; the first runner to get one sends
    them as one group. Within it, the same key twice gives one restock and a replay, an
    unknown SKU its 422 (the general way), and each restock its own level after it."""
    db: Database = app.state.stockroom.db
    for sku in ("GRP-HOT", "GRP-OTHER"):
        await make_product(client, admin, sku)

    def post(sku: str, quantity: int, key: str | None) -> Any:
        headers = {**admin, "Idempotency-Key": key} if key else admin
        return client.post(RESTOCK, json={"sku": sku, "quantity": quantity}, headers=headers)

    groups_before = _groups_run()
    async with contextlib.AsyncExitStack() as taken:
        for _ in range(app.state.stockroom.settings.db_pool_size):
            await taken.enter_async_context(db.acquire())
        requests = [
            asyncio.create_task(post("GRP-OTHER", 5, None)),
            asyncio.create_task(post("GRP-HOT", 1, "grp-1")),
            asyncio.create_task(post("GRP-HOT", 1, "grp-1")),
            asyncio.create_task(post("GRP-NONE", 3, "grp-3")),
            asyncio.create_task(post("GRP-HOT", 4, "grp-4")),
        ]
        await eventually(lambda: holds(len(db.queued) == 5), what="the five to queue")
    other, first, again, unknown, hot = await asyncio.wait_for(asyncio.gather(*requests), 20)
    assert _groups_run() == groups_before + 1

    assert [r.status_code for r in (other, first, again, unknown, hot)] == [201] * 3 + [422, 201]
    fresh, replay = sorted((first, again), key=lambda r: "idempotent-replayed" in r.headers)
    assert "idempotent-replayed" not in fresh.headers
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == fresh.content
    # in the group's order (by SKU): GRP-HOT's two restocks, then GRP-OTHER's
    assert [fresh.json()["stock"]["quantity"], hot.json()["stock"]["quantity"]] in ([1, 5], [4, 5])
    assert other.json()["stock"]["quantity"] == 5
    assert fresh.json()["movement"]["id"] < other.json()["movement"]["id"]
    assert hot.json()["movement"]["id"] < other.json()["movement"]["id"]
    assert await levels(app.state.stockroom.db) == {
        ("GRP-HOT", "MAIN"): 5,
        ("GRP-OTHER", "MAIN"): 5,
    }
    await assert_ledger_consistent(app.state.stockroom.db)
