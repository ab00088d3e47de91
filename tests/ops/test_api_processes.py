"""``stockroom api --workers 2``: one /metrics for both processes — whichever answers the
scrape counts every request either served."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Env
from tests.servers import api_server


def _healthz_count(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^stockroom_http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$',
            metrics,
            re.MULTILINE,
        )
    )


async def test_two_api_processes_share_one_metrics_view(env: Env) -> None:
    async with (
        api_server(env.process_env(), "--workers", "2") as base,
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        before = _healthz_count((await client.get("/metrics")).text)
        n = 60
        for _ in range(n):  # a connection each: the kernel spreads them over both
            async with httpx.AsyncClient(base_url=base, timeout=5) as one:
                assert (await one.get("/healthz")).status_code == 200
        after = _healthz_count((await client.get("/metrics")).text)
    assert after - before == n
