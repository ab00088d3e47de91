"""``stockroom api --workers 2``: one /metrics for both processes — whichever answers the
scrape counts every request either served."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Env
from tests.servers import api_server
from tests.waiting import eventually


def _readyz_count(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^stockroom_http_requests_total\{[^}]*route="/readyz"[^}]*\} (\S+)$',
            metrics,
            re.MULTILINE,
        )
    )


async def test_two_api_processes_share_one_metrics_view(env: Env) -> None:
    async with (
        api_server(env.process_env(), "--workers", "2") as base,
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        # /readyz, which nothing else here asks for (the start-up probe asks for /healthz)
        before = _readyz_count((await client.get("/metrics")).text)
        n = 60
        for _ in range(n):  # a connection each: the kernel spreads them over both
            async with httpx.AsyncClient(base_url=base, timeout=5) as one:
                assert (await one.get("/readyz")).status_code == 200
        counted: list[float] = []

        async def every_request_counted() -> bool:
            # a scrape is a snapshot up to a second old (api.metrics): ask until it is newer
            counted.append(_readyz_count((await client.get("/metrics")).text) - before)
            return counted[-1] == n

        await eventually(every_request_counted, timeout=10, what=f"{n} requests counted")
    assert counted[-1] == n
