#!/usr/bin/env python3
"""Soak: the whole stack under a steady mixed load for minutes, looking for leaks and drift.

Starts its own stack (a database of its own, migrated and seeded; ``stockroom api`` on a free
port; one ``stockroom worker``), then for ``--duration`` seconds (default 300; environment
``STOCKROOM_SOAK_SECONDS``) runs ``--clients`` tasks (default 8), each looping over a mix of
restocks (Idempotency-Key each), adjustments (+1/-1), reads (a product, a SKU's levels, a page
of the catalog), and polls of the audit jobs its restocks returned; a valuation report (CSV)
is requested every ``--report-every`` seconds (default 5) and polled. Rate limiting is on, with
a limit the run never reaches.

Prints, per minute: requests, errors (5xx, transport errors, and statuses no request of the
mix should get), and p99 latency per route; API and worker RSS (the worker's report renderer
included) and the database's connections at the start and the end of each minute, so a leak
shows as a slope. Exit status 1 when any request erred. Cleans up after itself (see
``bench/worker_common.Stack``).

    bench/soak.sh [--duration 300] [--clients 8] [--report-every 5] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_common as wc

# the answers each request of the mix may get; anything else counts as an error
EXPECTED = {
    "restock": {201},
    "adjust": {201, 409},  # 409: the level would go below zero
    "product": {200},
    "levels": {200},
    "catalog": {200},
    "job": {200},
    "report": {202},
    "report poll": {200},
}


@dataclass
class Minute:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: int = 0
    requests: int = 0
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # api kB, worker kB, conns


def rss_kb(pid: int) -> int:
    """Resident set of ``pid`` and its descendants (the worker's renderer children), in kB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return total


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stack = wc.Stack(prefix="soak")
        self.minutes: dict[int, Minute] = defaultdict(Minute)
        self.started = 0.0
        self.skus: list[str] = []
        self.jobs: list[str] = []

    def minute(self) -> Minute:
        last = max(0, (self.args.duration - 1) // 60)  # the closing sample: the last minute's
        return self.minutes[min(last, int((time.monotonic() - self.started) // 60))]

    async def call(
        self, client: httpx.AsyncClient, route: str, method: str, url: str, **kw: object
    ) -> httpx.Response | None:
        begun = time.monotonic()
        minute = self.minute()
        minute.requests += 1
        try:
            response = await client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            minute.errors += 1
            wc.log(f"{route}: {type(exc).__name__}: {exc}")
            return None
        minute.latencies[route].append(time.monotonic() - begun)
        if response.status_code not in EXPECTED[route]:
            minute.errors += 1
            if minute.errors <= 5:
                wc.log(f"{route}: {response.status_code} {response.text[:200]}")
        return response

    async def client_loop(self, client: httpx.AsyncClient, deadline: float) -> None:
        rng = random.Random()
        while time.monotonic() < deadline:
            sku = rng.choice(self.skus)
            pick = rng.random()
            if pick < 0.35:
                r = await self.call(
                    client,
                    "restock",
                    "POST",
                    "/api/v1/inventory/restock",
                    json={"sku": sku, "quantity": rng.randint(1, 5)},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                if r is not None and r.status_code == 201:
                    self.jobs.append(r.json()["audit_job"]["id"])
                    del self.jobs[:-1000]
            elif pick < 0.5:
                body = {"sku": sku, "location_code": "MAIN", "delta": rng.choice((1, -1))}
                await self.call(
                    client,
                    "adjust",
                    "POST",
                    "/api/v1/inventory/adjustments",
                    json={**body, "reason": "count"},
                )
            elif pick < 0.65:
                await self.call(client, "product", "GET", f"/api/v1/catalog/products/{sku}")
            elif pick < 0.8:
                await self.call(client, "levels", "GET", f"/api/v1/inventory/{sku}")
            elif pick < 0.9:
                await self.call(client, "catalog", "GET", "/api/v1/catalog/products?limit=50")
            elif self.jobs:
                await self.call(client, "job", "GET", f"/api/v1/jobs/{rng.choice(self.jobs)}")

    async def report_loop(self, client: httpx.AsyncClient, deadline: float) -> None:
        pending: list[str] = []
        while time.monotonic() < deadline:
            r = await self.call(
                client,
                "report",
                "POST",
                "/api/v1/reports",
                json={"kind": "valuation", "format": "csv"},
            )
            if r is not None and r.status_code == 202:
                pending.append(r.json()["id"])
            for job_id in list(pending):
                polled = await self.call(client, "report poll", "GET", f"/api/v1/jobs/{job_id}")
                if polled is not None and polled.json().get("status") == "complete":
                    pending.remove(job_id)
            await asyncio.sleep(self.args.report_every)

    async def sample_loop(self, api: wc.Proc, worker: wc.Proc, deadline: float) -> None:
        conn = await asyncpg.connect(self.stack.db_url)
        try:
            while True:
                count = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                )
                sample = (rss_kb(api.pid), rss_kb(worker.pid), int(count) - 1)  # less ours
                self.minute().samples.append(sample)
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        finally:
            await conn.close()

    async def load(self, base: str, key: str, api: wc.Proc, worker: wc.Proc) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=self.args.clients + 2)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=30, limits=limits
        ) as client:
            self.started = time.monotonic()
            deadline = self.started + self.args.duration
            await asyncio.gather(
                self.sample_loop(api, worker, deadline),
                self.report_loop(client, deadline),
                *(self.client_loop(client, deadline) for _ in range(self.args.clients)),
            )

    def run(self) -> int:
        stack = self.stack
        stack.create_database()
        stack.run_cmd(
            [wc.STOCKROOM, "seed", "--products", "500", "--locations", "2"],
            timeout=120,
            what="stockroom seed",
        )
        created = json.loads(
            stack.run_cmd(
                [wc.STOCKROOM, "keys", "create", "--name", "soak", "--scopes", "admin", "--json"],
                timeout=60,
                what="stockroom keys create",
            )
        )
        self.skus = asyncio.run(self._skus())
        port = _free_port()
        api = stack.start(
            "api",
            [wc.STOCKROOM, "api", "--port", str(port)],
            STOCKROOM_RATE_LIMIT_REQUESTS=str(10**9),
        )
        worker = stack.start("worker", [wc.STOCKROOM, "worker"])
        base = f"http://127.0.0.1:{port}"
        _wait_up(base, api)
        wc.log(f"soak: {self.args.duration} s, {self.args.clients} clients; {wc.machine_note()}")
        asyncio.run(self.load(base, created["key"], api, worker))
        stack.check_alive(api, worker)
        return self.report()

    async def _skus(self) -> list[str]:
        conn = await asyncpg.connect(self.stack.db_url)
        try:
            return [r[0] for r in await conn.fetch("SELECT sku FROM products ORDER BY id")]
        finally:
            await conn.close()

    def report(self) -> int:
        routes = list(EXPECTED)
        rows = []
        total = errors = 0
        for n in sorted(self.minutes):
            m = self.minutes[n]
            total += m.requests
            errors += m.errors
            p99 = [
                f"{wc.percentile(m.latencies[r], 99) * 1000:.0f}" if m.latencies[r] else "-"
                for r in routes
            ]
            first, last = (m.samples[0], m.samples[-1]) if m.samples else ((0, 0, 0),) * 2
            rows.append(
                [
                    n + 1,
                    m.requests,
                    m.errors,
                    *p99,
                    f"{first[0] // 1024}->{last[0] // 1024}",
                    f"{first[1] // 1024}->{last[1] // 1024}",
                    f"{first[2]}->{last[2]}",
                ]
            )
        headers = ["min", "requests", "errors", *[f"p99 {r} ms" for r in routes]]
        print(wc.table([*headers, "API RSS MB", "worker RSS MB", "PG conns"], rows))
        rate = errors / total if total else float("nan")
        print(f"\nrequests {total}, errors {errors} (error rate {rate:.5f}); {wc.machine_note()}")
        return 1 if errors else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _wait_up(base: str, api: wc.Proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.popen.poll() is not None:
            raise wc.BenchError(f"the API exited:\n{api.tail()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise wc.BenchError(f"the API did not become ready:\n{api.tail()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = int(os.environ.get("STOCKROOM_SOAK_SECONDS", "300"))
    parser.add_argument("--duration", type=int, default=default, help="seconds of load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--report-every", type=float, default=5.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    soak = Soak(args)
    wc.install_budget(args.duration + 300)
    failed = True
    try:
        status = soak.run()
        failed = False
        return status
    except wc.BenchError as exc:
        wc.log(f"FAILED: {exc}")
        return 2
    finally:
        soak.stack.cleanup(keep_logs=args.keep_logs or failed)


if __name__ == "__main__":
    sys.exit(main())
