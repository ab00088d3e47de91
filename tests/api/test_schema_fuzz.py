"""Schema fuzzing (schemathesis) against the real API: ``stockroom api`` on a free port, the
test run's PostgreSQL and Redis, ``/api/openapi.json`` as it serves it. Every operation, every
check but ``positive_data_acceptance`` (schema-valid data the API refuses by design: a cursor
it never issued, an unknown SKU or location, a stale ETag, stock that would go negative —
422, 409, 412), a fixed seed (``derandomize``), ``STOCKROOM_FUZZ_EXAMPLES`` examples per
operation and generation mode, positive and negative (default 12 in CI, ~40 s here; set it
higher for a longer run). The key is given to schemathesis as the bearer scheme's credential,
so that its negative cases without one (or with a malformed one) are sent as generated. A
stateful run follows the document's links (``api.openapi.LINKS``), each sequence from the same
data.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import Env
from tests.servers import api_server

EXAMPLES = int(os.environ.get("STOCKROOM_FUZZ_EXAMPLES", "12"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: the same examples on every run
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
async def api_url(env: Env) -> AsyncIterator[str]:
    async with api_server(env.process_env()) as base:
        yield base


@pytest.fixture
async def fuzz_headers(admin: dict[str, str], api_url: str) -> dict[str, str]:
    """An admin key, and a product and a location for the examples that name one."""
    async with httpx.AsyncClient(base_url=api_url, headers=admin, timeout=10) as client:
        r = await client.post(
            "/api/v1/catalog/products",
            json={"sku": "FUZZ-1", "title": "Fuzzed", "unit_price": "1.00"},
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/inventory/locations", json={"code": "FUZZ"})
        assert r.status_code == 201, r.text
    return admin


def _fuzz(operation: Any, mode: GenerationMode, statuses: Counter[int]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ_SETTINGS
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=30)
        statuses[response.status_code] += 1

    run()


def test_no_operation_answers_outside_its_document(
    api_url: str, fuzz_headers: dict[str, str]
) -> None:
    # the key through schemathesis's own auth, so that its negative cases (no Authorization,
    # a malformed one) are sent as generated, and judged knowing what was sent
    token = fuzz_headers["Authorization"].removeprefix("Bearer ")
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": token}}}})
    schema = schemathesis.openapi.from_url(f"{api_url}/api/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25, [op.label for op in operations]
    failures = []
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, statuses[operation.label])
            except Unsatisfiable:  # no input to make invalid (/healthz): nothing to fuzz
                assert mode is GenerationMode.NEGATIVE, operation.label
            except BaseException as exc:  # every operation is fuzzed; all failures reported
                if not isinstance(exc, Exception | BaseExceptionGroup):
                    raise
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # the key was sent: every operation answered something else than 401, the lists a 2xx
    authenticated = [op for op, seen in statuses.items() if set(seen) - {401}]
    answered = [op for op, seen in statuses.items() if any(200 <= s < 300 for s in seen)]
    assert len(authenticated) == len(operations), statuses
    assert len(answered) >= 10, statuses


async def _reset_catalog(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "TRUNCATE products, stock_levels, movements, idempotency_keys, jobs, audit_entries,"
            " webhook_deliveries, reports, report_chunks RESTART IDENTITY CASCADE"
        )
    finally:
        await conn.close()


async def test_stateful_sequences_follow_the_links(
    api_url: str, fuzz_headers: dict[str, str], env: Env
) -> None:
    """Sequences built from the document's links (create a product → read it, its levels,
    restock it, update it with its ETag; a restock → its audit job), every check on every
    step. Runs the state machine in a thread: it makes blocking calls."""
    token = fuzz_headers["Authorization"].removeprefix("Bearer ")
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": token}}},
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{api_url}/api/openapi.json", config=config)
    workflow = schema.as_state_machine()
    answered: Counter[tuple[str, str, int]] = Counter()

    class FromTheSameData(workflow):  # type: ignore[misc,valid-type]
        """Each sequence starts from the same data (the key and its locations stay): a state
        machine's examples are replayed, and must meet the state they were made against."""

        def setup(self) -> None:
            asyncio.run(_reset_catalog(env.database_url))

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            answered[(case.method, case.path, response.status_code)] += 1

    await asyncio.to_thread(
        FromTheSameData.run,
        settings=settings(
            FUZZ_SETTINGS,
            max_examples=EXAMPLES,
            stateful_step_count=10,
        ),
    )
    # the sequences were authenticated and accepted (how many products they create and then
    # restock through the links varies with the answers: uuids, times; more with more examples)
    accepted = sum(n for (_, _, status), n in answered.items() if 200 <= status < 300)
    assert accepted >= EXAMPLES, answered
