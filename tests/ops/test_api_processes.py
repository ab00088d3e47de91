"""``stockroom api --workers 2``: one /metrics for both processes — whichever answers the
scrape counts every request either served."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

from shared.embedded import free_port
from tests.conftest import Env
from tests.waiting import answers, eventually


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
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "api", "--port", str(port), "--workers", "2"],
        env=env.process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            await eventually(lambda: answers(client), timeout=30, what="the API to answer")
            before = _healthz_count((await client.get("/metrics")).text)
            n = 60
            for _ in range(n):  # a connection each: the kernel spreads them over both
                async with httpx.AsyncClient(base_url=base, timeout=5) as one:
                    assert (await one.get("/healthz")).status_code == 200
            after = _healthz_count((await client.get("/metrics")).text)
        assert after - before == n
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
