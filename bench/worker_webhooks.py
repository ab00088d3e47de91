#!/usr/bin/env python3
"""A burst of webhook jobs through one worker process, in one command:
``.venv/bin/python bench/worker_webhooks.py`` (or ``bench/worker_webhooks.sh``).

N ``stock.low`` webhook jobs (default 2,000) are written as the API writes them
(``shared.jobs.outbox.create_job`` in one transaction), handed to ARQ after the commit
(``Queue.dispatch``), and delivered by one worker process (``stockroom worker`` itself,
``WORKER_CONCURRENCY`` 50) to a local receiver (a minimal keep-alive HTTP server in this
process that answers 200 at once). Each delivery is the real one: signed, sent over HTTP, its
attempt recorded in ``webhook_deliveries``, the job claimed under a lease and completed. The
clock starts just before the COMMIT and stops at the last ``finished_at``. The bench checks
every job ends ``complete`` in one attempt and the receiver got each ``webhook-id`` once.

Target (issue 12): ≥ 300 jobs/s on one worker process.
Exit status 0 when the target is met, 3 when missed, 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import worker_common as common
from shared.db.database import Database
from shared.jobs.kinds import JobKind
from shared.queue import Queue

TARGET_JOBS_PER_SECOND = 300.0
SECRET = "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="


class Receiver:
    """A keep-alive HTTP/1.1 server answering 200 to every POST, in a thread of its own;
    counts each ``webhook-id`` it receives."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(),), daemon=True
        ).start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length, webhook_id = 0, ""
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "webhook-id":
                        webhook_id = value.strip()
                await reader.readexactly(length)
                self.ids[webhook_id] = self.ids.get(webhook_id, 0) + 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def burst(
    stack: common.Stack, n: int, worker_pid: int, max_seconds: float
) -> tuple[float, float]:
    """Jobs/s and the worker's CPU per job (µs) for one burst of ``n`` webhook jobs."""
    db = await Database.connect(stack.db_url, pool_size=2)
    queue = Queue.from_url(stack.redis_url, stack.queue_name)
    try:
        async with db.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            alerts = [
                {"type": "stock.low", "data": {"sku": f"B-{i}", "on_hand": 0, "reorder_point": 1}}
                for i in range(n)
            ]
            uow = await common.write_jobs(conn, "burst", [(JobKind.webhook, a) for a in alerts])
            cpu0 = common.proc_cpu_seconds([worker_pid])
            started = time.time()
            await transaction.commit()
            await queue.dispatch(uow.new_jobs)  # as the API does after the commit
            while True:
                await asyncio.sleep(0.01)
                left = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE status IN ('queued', 'in_progress')"
                )
                if left == 0:
                    break
                if time.time() - started > max_seconds:
                    raise common.BenchError(f"{left} of {n} jobs left after {max_seconds:.0f} s")
            cpu = common.proc_cpu_seconds([worker_pid]) - cpu0
            elapsed = await conn.fetchval(
                "SELECT extract(epoch FROM max(finished_at))::float8 - $1 FROM jobs", started
            )
            bad = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE NOT (status = 'complete' AND attempts = 1)"
            )
            if bad:
                raise common.BenchError(f"{bad} of {n} jobs not complete in one attempt")
            await conn.execute("TRUNCATE webhook_deliveries, jobs CASCADE")
        return n / elapsed, 1e6 * cpu / n
    finally:
        await queue.close()
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60, help="cap per round")
    parser.add_argument("--budget", type=int, default=175, help="stop after this many seconds")
    args = parser.parse_args(argv)
    common.install_budget(args.budget)
    stack = common.Stack(prefix="wwh")

    def measure() -> bool:
        common.log(common.machine_note())
        receiver = Receiver()
        stack.create_database()
        worker = stack.start_ours(
            "worker",
            handler=False,
            STOCKROOM_WEBHOOK_URL=f"http://127.0.0.1:{receiver.port}/hooks",
            STOCKROOM_WEBHOOK_SECRET=SECRET,
            STOCKROOM_WORKER_CONCURRENCY="50",
        )
        stack.wait_ours_ready([worker])
        rounds = []
        for round_no in range(args.rounds):
            rate, cpu = asyncio.run(burst(stack, args.jobs, worker.pid, args.max_seconds))
            stack.check_alive(worker)
            rounds.append((rate, cpu))
            common.log(f"round {round_no + 1}: {rate:,.0f} jobs/s, worker {cpu:,.0f} µs CPU/job")
        expected = args.jobs * args.rounds
        if len(receiver.ids) != expected or any(c != 1 for c in receiver.ids.values()):
            raise common.BenchError(f"receiver got {len(receiver.ids)} ids for {expected} jobs")
        best = max(rounds)
        ok = best[0] >= TARGET_JOBS_PER_SECOND
        print()
        print(f"Webhook burst, {args.jobs} jobs, one worker process (best of {args.rounds})")
        print(f"machine: {common.machine_note()}")
        print(
            common.table(
                ["jobs/s", "rounds (jobs/s)", "worker CPU µs/job", "target", "result"],
                [
                    [
                        f"{best[0]:,.0f}",
                        " ".join(f"{r:,.0f}" for r, _ in rounds),
                        f"{best[1]:,.0f}",
                        f"≥ {TARGET_JOBS_PER_SECOND:g} jobs/s",
                        "PASS" if ok else "FAIL",
                    ]
                ],
            )
        )
        return ok

    return common.run_bench(stack, measure)


if __name__ == "__main__":
    sys.exit(main())
