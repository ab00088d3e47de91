"""A domain error under an Idempotency-Key is stored while the key's lock is still held
(the work runs in a savepoint; the error's answer is stored in the same transaction), so a
same-key request can never slip in between, run the request again, and answer differently
from the first response."""

from __future__ import annotations

import asyncio
import json

import httpx

from shared.db.database import Database
from shared.idempotency import fingerprint, lock_id
from tests.inventory.helpers import (
    ADJUST,
    RESTOCK,
    assert_ledger_consistent,
    make_product,
    restock,
)
from tests.waiting import eventually

KEY = "pick-once"


async def waiting(db: Database, sql: str) -> bool:
    """Whether ``sql`` (a count of waiting sessions or locks) says so yet."""
    async with db.pool.acquire() as conn:
        return bool(await conn.fetchval(sql))


async def test_a_failed_request_is_remembered_before_its_key_is_released(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await make_product(client, admin, "BIN-1")
    await restock(client, admin, "BIN-1", 1)
    take = {"sku": "BIN-1", "location_code": "MAIN", "delta": -1, "reason": "pick"}
    headers = {**admin, "Idempotency-Key": KEY}
    async with db.pool.acquire() as conn:
        key_prefix = await conn.fetchval("SELECT prefix FROM api_keys WHERE name = 'admin'")
        product_id = await conn.fetchval("SELECT id FROM products WHERE sku = 'BIN-1'")
    key_lock = lock_id(key_prefix, KEY)

    async with db.pool.acquire() as other, db.pool.acquire() as retrier:
        # another picker takes the last unit and has not committed yet
        picker = other.transaction()
        await picker.start()
        await other.execute(
            "UPDATE stock_levels SET quantity = quantity - 1 WHERE product_id = $1", product_id
        )
        await other.execute(
            "INSERT INTO movements (product_id, location_id, delta, reason)"
            " SELECT $1, id, -1, 'pick' FROM locations WHERE code = 'MAIN'",
            product_id,
        )
        # our request claims the key, then waits for that row
        first_task = asyncio.create_task(client.post(ADJUST, json=take, headers=headers))
        await eventually(
            lambda: waiting(
                db,
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%UPDATE stock_levels%'",
            ),
            what="the request to wait for the level",
        )
        # a retry of the same request (same key) is queued on the key meanwhile
        retry_task = asyncio.create_task(retrier.execute("SELECT pg_advisory_lock($1)", key_lock))
        await eventually(
            lambda: waiting(
                db,
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ),
            what="the retry to wait for the key",
        )
        await picker.commit()
        first = await first_task
        assert first.status_code == 409, first.text
        assert first.json()["type"].endswith("/insufficient-stock")
        await retry_task  # the retry got the key; it finds nothing stored and goes on
        await retrier.execute("SELECT pg_advisory_unlock($1)", key_lock)

    await restock(client, admin, "BIN-1", 5)
    again = await client.post(ADJUST, json=take, headers=headers)
    await assert_ledger_consistent(db)
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (409, "true"), (
        "a retry with the same Idempotency-Key must replay the first answer (409"
        f" insufficient-stock); it ran the request again and got {again.status_code}:"
        " the unit of work released the key before storing the error"
    )
    assert again.content == first.content


async def test_a_key_stored_while_the_request_ran_wins_and_the_work_is_undone(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    """The key's lock and its lookup are one statement, whose snapshot predates the lock: a
    holder that commits between the two goes unseen, so the request does its work; storing
    the key then meets the holder's record, and the request must keep nothing and answer as
    a replay of the holder's answer (SPEC: same key, same body → the first response)."""
    await make_product(client, admin, "BIN-2")
    await restock(client, admin, "BIN-2", 1)
    line = {"sku": "BIN-2", "quantity": 7}
    headers = {**admin, "Idempotency-Key": "slipped-in"}
    async with db.pool.acquire() as conn:
        api_key_id = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'admin'")
        product_id = await conn.fetchval("SELECT id FROM products WHERE sku = 'BIN-2'")
        movements_before = await conn.fetchval("SELECT count(*) FROM movements")

    async with db.pool.acquire() as blocker, db.pool.acquire() as holder:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(
            "UPDATE stock_levels SET quantity = quantity WHERE product_id = $1", product_id
        )
        request = asyncio.create_task(client.post(RESTOCK, json=line, headers=headers))
        await eventually(
            lambda: waiting(
                db,
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO stock_levels%'",
            ),
            what="the request to have claimed its key and to wait for the level",
        )
        # the key's other holder commits now, after the request's lookup
        await holder.execute(
            "INSERT INTO idempotency_keys"
            " (api_key_id, key, fingerprint, status_code, headers, body)"
            " VALUES ($1, $2, $3, 201, $4, $5)",
            api_key_id,
            "slipped-in",
            fingerprint("POST", RESTOCK, json.dumps(line).encode()),
            {"content-type": "application/json"},
            b'{"answered": "by the holder"}',
        )
        await hold.commit()
        response = await request

    assert (response.status_code, response.headers.get("idempotent-replayed")) == (201, "true")
    assert response.json() == {"answered": "by the holder"}
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM movements") == movements_before
    await assert_ledger_consistent(db)
    again = await client.post(RESTOCK, json=line, headers=headers)
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true")
    assert again.json() == {"answered": "by the holder"}
