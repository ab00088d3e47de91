#!/usr/bin/env python3
"""The API's own cost per restock, without HTTP parsing or a load generator: drives the ASGI
app in-process (the same app ``stockroom api`` serves, middlewares included, on uvloop) with
``--concurrency`` tasks, each posting restocks with its own Idempotency-Key, for ``--rounds``
rounds, and prints the API process's CPU per request (``time.process_time``; min and median
of the rounds), the request rate, and the full garbage collections during the rounds; then
the CPU per ``GET /healthz`` through the same app (min of the rounds): what the framework's
stack and the app's middlewares cost any request, the floor under the restock's figure.

A tool for A/B work on the hot path (``--profile out.prof`` writes a CPU-time cProfile of the
measured rounds); ``bench/restock.sh`` gives the figures the inventory issue asks for. It creates and drops a
database of its own and deletes its Redis keys.

    .venv/bin/python bench/restock_inprocess.py [--requests 2560] [--rounds 5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app
from shared.auth import service as keys_service
from shared.db.migrate import upgrade_async
from shared.db.urls import driver_url
from shared.seed import seed
from shared.settings import load_settings


async def _request(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes, method: str = "POST"
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status = 0
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2560, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--no-key", action="store_true", help="omit the Idempotency-Key")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--healthz", type=int, default=5000, help="GET /healthz per round")
    args = parser.parse_args(argv)
    admin_url = os.environ.get(
        "STOCKROOM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("STOCKROOM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"stockroom_inproc_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(driver_url(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        await upgrade_async(url)
        await seed(url, products=args.skus, locations=1, movements=0)
        conn = await asyncpg.connect(driver_url(url))
        try:
            key = await keys_service.create_key(conn, "bench", ["admin"])
            skus = [r["sku"] for r in await conn.fetch("SELECT sku FROM products ORDER BY id")]
        finally:
            await conn.close()
        settings = load_settings(
            database_url=url,
            redis_url=redis_url,
            queue_name=name,
            env="production",
            # limiting on (as bench/restock.sh runs it), with a limit this run never reaches
            rate_limit_requests=10**9,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            counter = iter(range(10**9))

            async def client(n: int) -> list[int]:
                statuses = []
                for _ in range(n):
                    i = next(counter)
                    body = json.dumps({"sku": skus[i % len(skus)], "quantity": 1}).encode()
                    headers = [
                        (b"authorization", f"Bearer {key.key}".encode()),
                        (b"content-type", b"application/json"),
                    ]
                    if not args.no_key:
                        headers.append((b"idempotency-key", f"k-{name}-{i}".encode()))
                    status, _ = await _request(app, "/api/v1/inventory/restock", headers, body)
                    statuses.append(status)
                return statuses

            await asyncio.gather(*(client(20) for _ in range(args.concurrency)))  # warm-up
            per = args.requests // args.concurrency
            profiler = cProfile.Profile(time.process_time) if args.profile else None
            cpus, rates, bad = [], [], []
            pauses: list[float] = []
            gc_started = [0.0]

            def on_gc(phase: str, info: dict[str, Any]) -> None:
                if phase == "start":
                    gc_started[0] = time.perf_counter()
                elif info["generation"] == 2:
                    pauses.append(time.perf_counter() - gc_started[0])

            gc.callbacks.append(on_gc)
            for _ in range(args.rounds):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                if profiler:
                    profiler.enable()
                results = await asyncio.gather(*(client(per) for _ in range(args.concurrency)))
                if profiler:
                    profiler.disable()
                cpus.append(time.process_time() - cpu0)
                rates.append(per * args.concurrency / (time.perf_counter() - wall0))
                bad += [s for r in results for s in r if s != 201]
            gc.callbacks.remove(on_gc)
            if profiler:
                profiler.dump_stats(args.profile)
            healthz_cpus = []
            for _ in range(args.rounds if args.healthz else 0):
                cpu0 = time.process_time()
                for _ in range(args.healthz):
                    await _request(app, "/healthz", [], b"", method="GET")
                healthz_cpus.append((time.process_time() - cpu0) / args.healthz)
        total = per * args.concurrency
        cpus.sort()
        print(
            f"requests={total}x{args.rounds} concurrency={args.concurrency} non-201={len(bad)}"
            f" api_cpu_per_request_ms min={cpus[0] / total * 1000:.3f}"
            f" median={cpus[len(cpus) // 2] / total * 1000:.3f}"
            f" req_per_s max={max(rates):.0f}"
            f" gen2_collections={len(pauses)} max_pause_ms={max(pauses, default=0) * 1000:.1f}"
            f" healthz_cpu_per_request_us min={min(healthz_cpus, default=0) * 1e6:.1f}"
        )
        return 1 if bad else 0
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        redis = Redis.from_url(redis_url)
        try:  # the run's queue and the audit wake-ups it sent
            async for redis_key in redis.scan_iter(match=f"*{name}*", count=1000):
                await redis.delete(redis_key)
        finally:
            await redis.aclose()


if __name__ == "__main__":
    import uvloop  # as uvicorn runs the API

    raise SystemExit(uvloop.run(main(sys.argv[1:])))
