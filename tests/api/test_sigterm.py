"""``stockroom api`` stopped with SIGTERM under a stream of restocks: the requests in flight
finish and are answered, and nothing committed goes unanswered — every restock a client saw
fail, retried with its key, runs for the first time (none replays), and the ledger holds
exactly the answered ones."""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import dataclass, field

import httpx

from shared.db.database import Database
from tests.conftest import Env
from tests.inventory.helpers import RESTOCK, make_product
from tests.servers import api_answers, api_process
from tests.waiting import eventually, holds

CLIENTS = 6
SKU = "TERM-1"


@dataclass
class Outcomes:
    created: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # no answer: never sent, or lost
    other: list[str] = field(default_factory=list)

    async def client(self, base: str, headers: dict[str, str], number: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while True:
                key, quantity = f"t{number}-{uuid.uuid4().hex[:8]}", number + 1
                try:
                    r = await http.post(
                        RESTOCK,
                        json={"sku": SKU, "quantity": quantity},
                        headers={**headers, "Idempotency-Key": key},
                    )
                except httpx.TransportError:
                    self.failed[key] = quantity
                    return  # the server is going: this client stops
                if r.status_code == 201:
                    self.created[key] = quantity
                else:
                    self.other.append(f"{r.status_code}: {r.text}")


async def test_sigterm_under_load_answers_what_is_in_flight_and_loses_nothing(
    env: Env, admin: dict[str, str], client: httpx.AsyncClient, db: Database
) -> None:
    await make_product(client, admin, SKU)
    outcomes = Outcomes()
    with api_process(env.process_env()) as (base, proc):
        await api_answers(base)
        clients = [asyncio.create_task(outcomes.client(base, admin, n)) for n in range(CLIENTS)]
        await eventually(lambda: holds(len(outcomes.created) >= 50), what="restocks flowing")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)
        # uvicorn stops gracefully, then re-raises the signal it caught: -SIGTERM
        assert await asyncio.to_thread(proc.wait, 30) in (0, -signal.SIGTERM)

    assert outcomes.other == [], outcomes.other[:5]
    # each restock the clients saw fail had not committed: retried, it runs, no replay
    for key, quantity in outcomes.failed.items():
        r = await client.post(
            RESTOCK,
            json={"sku": SKU, "quantity": quantity},
            headers={**admin, "Idempotency-Key": key},
        )
        assert r.status_code == 201, r.text
        assert "idempotent-replayed" not in r.headers, f"{key} committed but went unanswered"
    async with db.pool.acquire() as conn:
        movements = await conn.fetchval("SELECT count(*) FROM movements")
        units = await conn.fetchval("SELECT sum(delta) FROM movements")
    answered = {**outcomes.created, **outcomes.failed}
    assert movements == len(answered)
    assert units == sum(answered.values())
