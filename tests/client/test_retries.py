"""Safe retries: a POST whose answer was lost is sent again with the same Idempotency-Key and
replayed, not done twice; what is retried and what is not; the server's delay honoured."""

from __future__ import annotations

import httpx
import pytest

from shared.db.database import Database
from stockroom_client import AsyncClient, RetryEvent, RetryPolicy, ValidationFailed
from stockroom_client.retry import server_delay
from tests.client.conftest import DroppingProxy, on_hand
from tests.conftest import count


async def test_a_restock_whose_answer_was_dropped_is_replayed_not_counted_twice(
    proxy: DroppingProxy, key: str, db: Database, products: list[str]
) -> None:
    retries: list[RetryEvent] = []
    sent_keys: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent_keys.append(request.headers["idempotency-key"])

    proxy.drop_answers = 1
    async with AsyncClient(
        f"http://127.0.0.1:{proxy.port}",
        key,
        retry=RetryPolicy(attempts=3, backoff_base=0.05),
        on_retry=retries.append,
    ) as client:
        client._http.event_hooks["request"].append(record)
        result = await client.restock("BOLT-M8", 25, reference="po-77")
    assert proxy.dropped == 1
    assert len(retries) == 1 and retries[0].method == "POST" and retries[0].attempt == 1
    assert len(sent_keys) == 2 and sent_keys[0] == sent_keys[1]  # the same key, both times
    assert result.stock.quantity == 25 and result.movement.reference == "po-77"
    assert await on_hand(db, "BOLT-M8") == 25
    assert await count(db, "SELECT count(*) FROM movements") == 1
    assert await count(db, "SELECT count(*) FROM idempotency_keys") == 1


async def test_every_post_carries_a_fresh_key_unless_one_is_given(
    sr: AsyncClient, db: Database, products: list[str]
) -> None:
    first = await sr.restock("BOLT-M8", 1)
    second = await sr.restock("BOLT-M8", 1)
    assert first.movement.id != second.movement.id
    given = await sr.restock("NUT-M8", 2, idempotency_key="po-1-line-1")
    replayed = await sr.restock("NUT-M8", 2, idempotency_key="po-1-line-1")
    assert replayed == given
    assert await on_hand(db, "NUT-M8") == 2
    assert await count(db, "SELECT count(*) FROM idempotency_keys") == 3


async def test_a_validation_error_is_raised_at_once_with_its_errors(
    sr: AsyncClient, retries: list[RetryEvent], products: list[str]
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        await sr.restock("NOPE-1", 5)
    assert raised.value.status == 422 and raised.value.title == "Unknown reference"
    assert raised.value.errors[0]["loc"] == ["body", "sku"]
    with pytest.raises(ValidationFailed) as invalid:
        await sr.restock("BOLT-M8", 0)
    assert invalid.value.errors[0]["loc"] == ["body", "quantity"]
    assert retries == []  # never retried


def _answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"type": "about:blank", "title": "x"})


def test_what_is_retried_and_after_how_long() -> None:
    policy = RetryPolicy(attempts=4, backoff_base=1.0, backoff_cap=3.0, max_server_delay=30)
    assert policy.delay_after(1, _answer(503, **{"Retry-After": "7"})) == 7.0
    assert policy.delay_after(1, _answer(429, **{"Retry-After": "7"})) == 7.0
    assert policy.delay_after(1, _answer(429, RateLimit='"default";r=0;t=12')) == 12.0
    assert policy.delay_after(1, _answer(429, **{"Retry-After": "120"})) is None  # too long
    for status in (502, 503, 504):
        delay = policy.delay_after(3, _answer(status))
        assert delay is not None and 0 <= delay <= 3.0  # capped, jittered
    connection_lost = policy.delay_after(2, None)
    assert connection_lost is not None and 0 <= connection_lost <= 2.0
    for status in (400, 401, 403, 404, 409, 412, 413, 422, 500):
        assert policy.delay_after(1, _answer(status)) is None
    in_flight = httpx.Response(
        409, json={"type": "https://stockroom.dev/problems/idempotency-key-in-flight"}
    )
    assert policy.delay_after(1, in_flight) is not None
    assert policy.delay_after(4, _answer(503)) is None  # out of attempts
    date = httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert server_delay(date) == 0.0  # a date in the past: at once
