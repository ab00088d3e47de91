#!/usr/bin/env python3
"""The restock benchmark, in one command: ``bench/restock.sh`` (or ``.venv/bin/python
bench/restock.py``).

From ONE run against this machine's PostgreSQL and Redis it prints, side by side:
- the framework ceiling: ``GET /healthz`` of the same app, in req/s;
- ``POST /api/v1/inventory/restock`` req/s and p50/p99 latency, on random SKUs among the seeded
  ones and on a few hot SKUs, every request with its own ``Idempotency-Key``;
- the database ceiling: pgbench running the statement one restock sends (generated from the
  code: ``pgbench_script``), one per transaction; and, for reference (no target), the same
  statement ``MAX_GROUP`` to a pipelined transaction, as the API's group commit sends them;
- how many restocks the API committed together, on average (its ``/metrics``);
- the ratios against the targets of the inventory issue, and a correctness check: no unit lost
  or counted twice, one movement and one audit job per accepted restock.

Steps: install wrk (and pgbench) if missing; create a database of its own, migrate, seed,
create an admin key; start ``stockroom api``; run wrk (``bench/ceiling.lua``,
``bench/restock.lua``) and pgbench, each after a warm-up; verify; print the table. It always
cleans up (stops the API, drops the database, deletes its Redis keys), also on failure or
Ctrl-C, and stops itself after ``--budget`` seconds.

Settings (environment): ``STOCKROOM_BENCH_DATABASE_URL`` (an admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``STOCKROOM_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``), ``STOCKROOM_BENCH_WORKERS`` (uvicorn workers, default 1).
Other ``STOCKROOM_*`` settings (``STOCKROOM_DB_POOL_SIZE``...) pass through to the API.

pgbench runs with as many clients as the API has database connections (pool size x workers:
the concurrency the database sees from the API; ``--pgbench-clients 64`` measured ~10 % lower).
The table also gives the CPU each request cost the API process and its database backends, and
how much CPU other processes used meanwhile: on a shared machine, figures taken while that is
not near 0 are disturbed. ``--profile`` adds a py-spy profile of the API (py-spy on PATH or in
``STOCKROOM_BENCH_PYSPY``) during one more restock run, after the figures.

Exit status: 0 when every target is met and the data is right, 1 on an error or a
correctness failure, 3 when the data is right but a performance target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_common import (  # noqa: E402
    BenchError,
    libpq_url,
    log,
    proc_cpu_seconds,
    with_database,
)
from shared.db.group_commit import MAX_GROUP  # noqa: E402
from shared.embedded import free_port  # noqa: E402
from shared.inventory.service import RESTOCK  # noqa: E402

BENCH = ROOT / "bench"
STOCKROOM = ROOT / ".venv" / "bin" / "stockroom"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POOL_SIZE = 10  # shared.settings.Settings.db_pool_size

# Targets of the inventory issue ("Performance").
TARGET_VS_CEILING = 0.35
TARGET_VS_PGBENCH = 0.50
TARGET_HOT_VS_RANDOM = 0.50
TARGET_P99_OVER_P50 = 4.0


# The pgbench script: the statement one keyed ``POST /inventory/restock`` sends (``shared.
# inventory.service.RESTOCK``), taken from the code, each parameter replaced by what
# the API would bind. Rows it writes carry reference 'pgbench'. Not mirrored: the API's Redis
# wake-up for the audit job after the statement (an API-side cost, throttled).
_PGBENCH_PARAMS = {
    1: ":prefix::text || lpad(:i::text, 7, '0')",  # sku
    2: "'MAIN'",  # location code
    3: ":qty::int",  # quantity
    4: "'pgbench'",  # reference
    5: "NULL::text",  # note
    6: "'pg-' || :r::text",  # request id
    7: "5",  # the audit job's max attempts
    8: ":keyprefix::text",
    9: "decode(:keyhash::text, 'hex')",  # the secret's hash
    10: "'pg-' || :r::text",  # the Idempotency-Key
    11: ":r::bigint",  # its advisory lock
    12: "sha256(convert_to(:r::text, 'UTF8'))",  # the request's fingerprint
}


def pgbench_script(group: int = 1) -> str:
    """One restock's statement per transaction; with ``group``, that many in one pipeline
    (one implicit transaction, as a ``GroupCommitter`` sends a group), on SKUs in ascending
    order (as a group runs: ``lock_order``), each from its own slice of the SKUs."""
    sql = " ".join(RESTOCK.sql.split())
    used = {int(n) for n in re.findall(r"\$(\d+)\b", sql)}
    if used != set(_PGBENCH_PARAMS):
        raise BenchError(f"the restock statement's parameters changed: {sorted(used)}")
    sql = re.sub(r"\$(\d+)\b", lambda m: f"({_PGBENCH_PARAMS[int(m.group(1))]})", sql)
    # pgbench takes ":name" anywhere for a variable, inside string literals too: spell their
    # colons as chr(58) (folded to a constant when the statement is planned)
    sql = re.sub(
        r"'(?:[^']|'')*'",
        lambda m: (
            "(" + m.group(0).replace(":", "' || chr(58) || '") + ")"
            if ":" in m.group(0)
            else m.group(0)
        ),
        sql,
    )
    if group == 1:
        return (
            "\\set i random(0, :nskus - 1)\n"
            "\\set qty random(1, 100)\n"
            "\\set r random(1, 9000000000000000000)\n"
            f"{sql};\n"
        )
    lines = []
    for k in range(group):
        lines.append(f"\\set i{k} {k} * (:nskus / {group}) + random(0, :nskus / {group} - 1)")
        lines.append(f"\\set qty{k} random(1, 100)")
        lines.append(f"\\set r{k} random(1, 9000000000000000000)")
    lines.append("\\startpipeline")
    for k in range(group):
        lines.append(re.sub(r":(i|qty|r)\b", rf":\g<1>{k}", sql) + ";")
    lines.append("\\endpipeline")
    return "\n".join(lines) + "\n"


def run(
    cmd: Sequence[str | Path],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> str:
    """Run a command to completion; its stdout, or BenchError with the tail of its output."""
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what or cmd[0]} took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise BenchError(f"{what or cmd[0]} failed ({proc.returncode}):\n  " + "\n  ".join(tail))
    return proc.stdout


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of the live processes in process group ``pgid`` (the API's)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all processes used since boot (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_bench_line(output: str) -> dict[str, Any]:
    """The ``BENCH k=v ...`` line the Lua scripts print from done()."""
    for line in output.splitlines():
        if line.startswith("BENCH "):
            values: dict[str, Any] = {}
            for item in line.split()[1:]:
                key, _, raw = item.partition("=")
                try:
                    values[key] = int(raw)
                except ValueError:
                    try:
                        values[key] = float(raw)
                    except ValueError:
                        values[key] = raw
            return values
    raise BenchError("wrk printed no BENCH line:\n" + output[-2000:])


class WaitSampler(threading.Thread):
    """What the API's database connections are doing, sampled from ``pg_stat_activity``
    every ~10 ms while a load runs: waiting for the API's next statement, for the WAL flush
    of a commit, for a lock, or running."""

    KINDS = ("the API", "the WAL flush", "a lock", "running", "other")

    def __init__(self, admin_url: str, db_name: str) -> None:
        super().__init__(daemon=True)
        self.admin_url, self.db_name = admin_url, db_name
        self.stop = threading.Event()
        self.counts: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        conn = await asyncpg.connect(libpq_url(self.admin_url))
        try:
            while not self.stop.is_set():
                rows = await conn.fetch(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE datname = $1 AND application_name = 'stockroom-api'",
                    self.db_name,
                )
                self.counts.update(self._kind(*row) for row in rows)
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    @staticmethod
    def _kind(state: str | None, wait_type: str | None, wait: str | None) -> str:
        if state == "idle" and wait == "ClientRead":
            return "the API"
        if wait in ("WALWrite", "WALSync", "WALInsert"):
            return "the WAL flush"
        if wait_type == "Lock":
            return "a lock"
        if state == "active" and wait_type is None:
            return "running"
        return "other"

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {k: self.counts[k] / total if total else float("nan") for k in self.KINDS}


@dataclass
class LoadResult:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_ms_per_req: float
    db_cpu_ms_per_req: float
    wal_bytes_per_req: float
    fpi_per_req: float  # full-page images written to the WAL, per request
    waits: dict[str, float]  # what the API's database connections did (WaitSampler)
    per_commit: float  # restocks per group commit (the API's stockroom_db_group_size)
    other_load: float  # cores used by processes that are not this benchmark's, during the run
    raw: dict[str, Any]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Bench:
    args: argparse.Namespace
    admin_url: str
    redis_url: str
    workers: int
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stockroom-bench-")))
    db_created: bool = False
    api: subprocess.Popen[bytes] | None = None
    api_log: Any = None
    port: int = 0
    sku_prefix: str = ""
    api_key: str = ""
    api_key_id: str = ""
    restock_tags: list[str] = field(default_factory=list)
    seen_files: list[Path] = field(default_factory=list)
    pgbench_processed: int = 0
    baseline_units: int = 0

    @property
    def db_name(self) -> str:
        return f"stockroom_bench_{self.run_id}"

    @property
    def queue_name(self) -> str:
        return f"stockroom-bench-{self.run_id}"

    @property
    def db_url(self) -> str:
        return with_database(self.admin_url, self.db_name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pool_size(self) -> int:
        return int(os.environ.get("STOCKROOM_DB_POOL_SIZE", DEFAULT_POOL_SIZE))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # limiting on (its cost is measured) but never refusing the one benchmark key
        env.setdefault("STOCKROOM_RATE_LIMIT_REQUESTS", str(10**9))
        env.update(
            STOCKROOM_DATABASE_URL=self.db_url,
            STOCKROOM_REDIS_URL=self.redis_url,
            STOCKROOM_QUEUE_NAME=self.queue_name,
            STOCKROOM_ENV="production",
        )
        return env

    # --- setup ---------------------------------------------------------------------------------

    def ensure_tools(self) -> None:
        updated = False

        def apt_install(package: str) -> None:
            nonlocal updated
            log(f"installing {package} (apt-get)")
            cmd = ["apt-get", "install", "-y", "-q", package]
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0:
                return
            if not updated:
                run(["apt-get", "update", "-q"], timeout=120, env=env, what="apt-get update")
                updated = True
            run(cmd, timeout=120, env=env, what=f"apt-get install {package}")

        if shutil.which("wrk") is None:
            apt_install("wrk")
        if shutil.which("pgbench") is None:
            apt_install("postgresql-client")
        for tool in ("wrk", "pgbench"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is not installed and could not be installed")
        if not STOCKROOM.exists():
            raise BenchError(f"{STOCKROOM} is missing: run scripts/bootstrap.sh first")

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(libpq_url(self.admin_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _prepare_tables(self) -> None:
        conn = await asyncpg.connect(libpq_url(self.db_url))
        try:
            # A day of stored Idempotency-Keys, as a service in steady state holds (they are
            # kept 24 h). On an empty table the API's connections plan the key lookup as a
            # sequential scan and keep that plan while the table grows, until autovacuum
            # (once a minute) analyzes it: measured, ~1.3 ms of database CPU per restock
            # instead of ~0.6 during the first minute of a fresh install.
            await conn.execute(
                """
                INSERT INTO idempotency_keys
                    (api_key_id, key, fingerprint, status_code, headers, body, created_at)
                SELECT $1::uuid, 'seed-' || g, sha256(g::text::bytea), 201,
                       '{"content-type": "application/json"}', '{}'::bytea,
                       now() - interval '23 hours' * random()
                FROM generate_series(1, $2::int) AS g
                """,
                self.api_key_id,
                self.args.seed_keys,
            )
            await conn.execute("VACUUM (ANALYZE)")
        finally:
            await conn.close()

    async def _units(self) -> int:
        conn = await asyncpg.connect(libpq_url(self.db_url))
        try:
            units: int = await conn.fetchval("SELECT coalesce(sum(quantity), 0) FROM stock_levels")
            return units
        finally:
            await conn.close()

    def create_database(self) -> None:
        log(f"creating database {self.db_name}")
        asyncio.run(self._admin(f'CREATE DATABASE "{self.db_name}"'))
        self.db_created = True
        env = self.env()
        run([STOCKROOM, "migrate"], timeout=60, env=env, what="stockroom migrate")
        out = run(
            # a stock level (an opening balance) for every SKU, as a warehouse in service has:
            # a restock then updates a level, in the API's runs and pgbench's alike (without
            # them the API's random run would insert the levels that pgbench then updates)
            [
                *(STOCKROOM, "seed", "--locations", "1"),
                *("--products", self.args.products, "--movements", self.args.products),
            ],
            timeout=60,
            env=env,
            what="stockroom seed",
        )
        self.sku_prefix = json.loads(out.strip().splitlines()[-1])["sku_prefix"]
        out = run(
            [STOCKROOM, "keys", "create", "--name", "bench", "--scopes", "admin", "--json"],
            timeout=30,
            env=env,
            what="stockroom keys create",
        )
        created = json.loads(out.strip().splitlines()[-1])
        self.api_key, self.api_key_id = created["key"], created["id"]
        self.baseline_units = asyncio.run(self._units())
        # as pgbench does before a run: autovacuum would otherwise work off the seed's fresh
        # tables in the middle of the measured runs
        log(f"{self.args.seed_keys} stored Idempotency-Keys; VACUUM ANALYZE")
        asyncio.run(self._prepare_tables())
        log(f"seeded {self.args.products} products (SKUs {self.sku_prefix}0000000...)")

    def start_api(self) -> None:
        self.port = free_port()
        self.api_log = open(self.workdir / "api.log", "wb")  # noqa: SIM115 - closed in cleanup
        cmd = [STOCKROOM, "api", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        log(f"starting the API on port {self.port} with {self.workers} worker(s)")
        self.api = subprocess.Popen(
            [str(c) for c in cmd],
            env=self.env(),
            stdout=self.api_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise BenchError("the API exited at start-up:\n" + self.api_log_tail())
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise BenchError("the API was not ready within 30 s:\n" + self.api_log_tail())

    def api_log_tail(self) -> str:
        try:
            return "\n".join((self.workdir / "api.log").read_text().splitlines()[-15:])
        except OSError:
            return ""

    # --- load ----------------------------------------------------------------------------------

    def wrk(self, script: str, url: str, duration: int, script_args: Sequence[str]) -> str:
        cmd = ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}"]
        cmd += [f"-d{duration}s", "--timeout", "10s", "--latency", "-s", str(BENCH / script), url]
        if script_args:
            cmd += ["--", *script_args]
        return run(cmd, timeout=duration + 30, what=f"wrk {script}")

    async def _wal(self) -> tuple[int, int]:
        """The cluster's WAL bytes and full-page images so far (``pg_stat_wal``)."""
        conn = await asyncpg.connect(libpq_url(self.admin_url))
        try:
            row = await conn.fetchrow("SELECT wal_bytes::bigint, wal_fpi FROM pg_stat_wal")
            assert row is not None
            return int(row[0]), int(row[1])
        finally:
            await conn.close()

    async def _backend_pids(self) -> list[int]:
        conn = await asyncpg.connect(libpq_url(self.admin_url))
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                " AND application_name = 'stockroom-api'",
                self.db_name,
            )
            return [int(r["pid"]) for r in rows]
        finally:
            await conn.close()

    def measure(self, name: str, script: str, url: str, make_args: Any) -> LoadResult:
        log(f"{name}: {self.args.warmup} s warm-up, {self.args.duration} s measured")
        self.wrk(script, url, self.args.warmup, make_args("warm"))
        assert self.api is not None
        backends = asyncio.run(self._backend_pids())  # the API's pool, open after warm-up
        api0, db0 = group_cpu_seconds(self.api.pid), proc_cpu_seconds(backends)
        wal0 = asyncio.run(self._wal())
        groups0 = self._groups()
        waits = WaitSampler(self.admin_url, self.db_name)
        waits.start()
        kids0, busy0, t0 = children_cpu_seconds(), machine_busy_seconds(), time.monotonic()
        try:
            output = self.wrk(script, url, self.args.duration, make_args("run"))
        finally:
            waits.stop.set()
            waits.join()
        elapsed = time.monotonic() - t0
        groups = [b - a for a, b in zip(groups0, self._groups(), strict=True)]
        wal = asyncio.run(self._wal())
        api = group_cpu_seconds(self.api.pid) - api0
        db = proc_cpu_seconds(backends) - db0
        wrk = children_cpu_seconds() - kids0
        other = machine_busy_seconds() - busy0 - api - db - wrk
        (self.workdir / f"wrk-{name}.txt").write_text(output)
        raw = parse_bench_line(output)
        requests = int(raw["requests"])
        per_req = 1000 / requests if requests else float("nan")
        return LoadResult(
            name=name,
            rps=float(raw["rps"]),
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            requests=requests,
            cpu_ms_per_req=api * per_req,
            db_cpu_ms_per_req=db * per_req,
            wal_bytes_per_req=(wal[0] - wal0[0]) / requests if requests else float("nan"),
            fpi_per_req=(wal[1] - wal0[1]) / requests if requests else float("nan"),
            waits=waits.shares(),
            per_commit=groups[1] / groups[0] if groups[0] else float("nan"),
            other_load=max(other, 0.0) / elapsed,
            raw=raw,
        )

    def _groups(self) -> tuple[float, float]:
        """The API's group commits so far, and the statements they committed (``/metrics``)."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        found = dict.fromkeys(("count", "sum"), 0.0)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("stockroom_db_group_size_"):
                found[name.removeprefix("stockroom_db_group_size_")] = float(value)
        return found["count"], found["sum"]

    def restock_args(self, mode: str) -> Any:
        def make(phase: str) -> list[str]:
            tag = f"wrk-{mode}-{phase}"
            self.restock_tags.append(tag)
            seen = self.workdir / f"seen-{tag}.txt"
            self.seen_files.append(seen)
            return [
                tag,
                mode,
                str(self.args.products),
                self.sku_prefix,
                self.api_key,
                str(self.args.hot),
                str(seen),
            ]

        return make

    def pgbench(self, group: int = 1) -> dict[str, float]:
        """pgbench's figures; with ``group``, per restock (``group`` per transaction)."""
        key_prefix = self.api_key.split("_")[1]
        script = self.workdir / f"restock_txn_{group}.sql"
        script.write_text(pgbench_script(group))
        base = ["pgbench", "-n", "-M", "prepared", "-f", str(script)]
        base += ["-c", str(self.args.pgbench_clients), "-j", str(self.args.threads)]
        base += ["-D", f"prefix={self.sku_prefix}", "-D", f"nskus={self.args.products}"]
        base += ["-D", f"keyprefix={key_prefix}"]
        secret = self.api_key.split("_", 2)[2]
        base += ["-D", f"keyhash={hashlib.sha256(secret.encode()).hexdigest()}"]
        dsn = libpq_url(self.db_url)
        what = "pgbench" if group == 1 else f"pgbench, {group} per pipelined transaction"
        log(f"{what}: {self.args.warmup} s warm-up, {self.args.duration} s measured")
        results: dict[str, float] = {}
        for phase, seconds in (("warm", self.args.warmup), ("run", self.args.duration)):
            wal0 = asyncio.run(self._wal())
            kids0, busy0 = children_cpu_seconds(), machine_busy_seconds()
            out = run([*base, "-T", str(seconds), dsn], timeout=seconds + 30, what="pgbench")
            wal = asyncio.run(self._wal())
            # what the machine did besides pgbench itself: its backends (and the idle API)
            db_seconds = machine_busy_seconds() - busy0 - (children_cpu_seconds() - kids0)
            processed = re.search(r"number of transactions actually processed: (\d+)", out)
            statements = group * int(processed.group(1)) if processed else 0
            self.pgbench_processed += statements
            if phase == "run":
                (self.workdir / f"pgbench-{group}.txt").write_text(out)
                tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
                lat = re.search(r"latency average = ([\d.]+) ms", out)
                failed = re.search(r"number of failed transactions: (\d+)", out)
                if tps is None:
                    raise BenchError("pgbench printed no TPS:\n" + out[-2000:])
                per = 1 / statements if statements else float("nan")
                results = {
                    "tps": group * float(tps.group(1)),
                    "db_cpu_ms": 1000 * db_seconds * per,
                    "wal_bytes": (wal[0] - wal0[0]) * per,
                    "fpi": (wal[1] - wal0[1]) * per,
                    "latency_ms": float(lat.group(1)) if lat else float("nan"),
                    "failed": float(failed.group(1)) if failed else 0.0,
                }
        return results

    def profile(self) -> None:
        """An extra restock run under py-spy (after the measured ones: it slows the API)."""
        pyspy = shutil.which("py-spy") or os.environ.get("STOCKROOM_BENCH_PYSPY")
        if not pyspy:
            log("--profile: py-spy not found (PATH or STOCKROOM_BENCH_PYSPY); skipped")
            return
        assert self.api is not None
        raw = self.workdir / "profile.raw.txt"
        log(f"profiling the API with py-spy for {self.args.duration} s of random restocks")
        spy = subprocess.Popen(
            [
                *(pyspy, "record", "--pid", str(self.api.pid), "--subprocesses"),
                *("--rate", "250", "--duration", str(self.args.duration)),
                *("--format", "raw", "--output", str(raw)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self.wrk(
                "restock.lua",
                self.base_url,
                self.args.duration + 1,
                self.restock_args("random")("profile"),
            )
        finally:
            spy.wait(timeout=30)
        if raw.exists():
            summary = summarise_profile(raw)
            (self.workdir / "profile.txt").write_text(summary)
            print(summary)
            log(f"profile: {self.workdir / 'profile.txt'} (raw stacks: {raw})")

    # --- correctness ---------------------------------------------------------------------------

    def retry_restock(self, key: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Re-send the request behind ``key`` (its body is rebuilt from the key) as a client
        retrying after a lost answer would."""
        tag, _tid, _n, idx, qty = key.rsplit("-", 4)
        body = {
            "sku": f"{self.sku_prefix}{int(idx):07d}",
            "quantity": int(qty),
            "reference": tag,
        }
        resp = httpx.post(
            self.base_url + "/api/v1/inventory/restock",
            json=body,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Idempotency-Key": key,
                "X-Request-ID": key,
            },
            timeout=10,
        )
        answer = resp.json() if resp.status_code == 201 else {}
        return resp.status_code, dict(resp.headers), answer

    async def _settle(self, conn: asyncpg.Connection) -> None:
        """Wait until the API has worked off the requests wrk left queued when it stopped
        (uvicorn serves a request whose client went away): the ledger unchanged for 0.5 s
        while every API connection is idle. Otherwise a late commit reads as a retry's write."""
        deadline = time.monotonic() + 30
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count, busy = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM movements),"
                " (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                "  AND application_name = 'stockroom-api' AND state <> 'idle')"
            )
            if count != last or busy:
                last, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since >= 0.5:
                return
            await asyncio.sleep(0.05)
        raise BenchError("the API was still writing 30 s after the load stopped")

    async def verify(self, results: dict[str, LoadResult]) -> list[Check]:
        checks: list[Check] = []
        # What the client saw: "request_id delta" for every 201.
        seen: dict[str, int] = {}
        duplicates = 0
        for path in self.seen_files:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                rid, _, delta = line.partition(" ")
                if rid in seen:
                    duplicates += 1
                seen[rid] = int(delta)
        non201 = sum(
            int(r.raw.get("non201", 0))
            + int(r.raw.get("non2xx", 0))
            + int(r.raw.get("err_timeout", 0))
            + int(r.raw.get("err_read", 0))
            for r in results.values()
        )
        statuses = sorted(
            {str(r.raw["statuses"]) for r in results.values() if r.raw.get("statuses", "-") != "-"}
        )
        checks.append(
            Check(
                "every measured request answered 201 (200 for /healthz)",
                non201 == 0,
                f"{non201} other answers or timeouts {statuses or ''}".strip(),
            )
        )

        conn = await asyncpg.connect(libpq_url(self.db_url))
        try:

            async def movements() -> dict[str, list[tuple[int, int]]]:
                rows = await conn.fetch(
                    "SELECT id, request_id, delta FROM movements WHERE reference LIKE 'wrk-%'"
                )
                by_request: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
                for row in rows:
                    by_request[row["request_id"]].append((row["id"], row["delta"]))
                return by_request

            await self._settle(conn)
            # fresh statistics: the checks below join tens of thousands of rows
            await conn.execute("ANALYZE movements; ANALYZE jobs; ANALYZE stock_levels")
            db = await movements()
            doubled = [rid for rid, rows in db.items() if len(rows) > 1]
            lost = [rid for rid in seen if rid not in db]
            wrong = [rid for rid, d in seen.items() if rid in db and db[rid][0][1] != d]
            # Accepted by the server, answer never read: in flight when wrk stopped. A client
            # would retry them with the same key: do so, and expect the stored answer.
            unread = sorted(set(db) - set(seen))
            bound = self.args.connections * len(self.restock_tags)
            bad_retries = []
            for rid in unread:
                status, headers, body = self.retry_restock(rid)
                replayed = {k.lower(): v for k, v in headers.items()}.get("idempotent-replayed")
                if (
                    status != 201
                    or replayed != "true"
                    or body.get("movement", {}).get("id") != db[rid][0][0]
                ):
                    bad_retries.append(f"{rid}: {status} replayed={replayed}")
                else:
                    seen[rid] = int(body["movement"]["delta"])
            # Replays of answered requests: same answer, nothing done twice.
            sample = list(seen)[:: max(1, len(seen) // 25)][:25]
            for rid in sample:
                status, headers, body = self.retry_restock(rid)
                replayed = {k.lower(): v for k, v in headers.items()}.get("idempotent-replayed")
                movement_id = body.get("movement", {}).get("id")
                if status != 201 or replayed != "true" or movement_id != db[rid][0][0]:
                    bad_retries.append(f"replay {rid}: {status} replayed={replayed}")
            after = await movements()

            checks.append(
                Check(
                    "each 201 has exactly one movement with its quantity",
                    not (lost or doubled or wrong or duplicates),
                    f"{len(seen) - len(unread)} answered: {len(lost)} lost, {len(doubled)} doubled,"
                    f" {len(wrong)} wrong quantity, {duplicates} answered twice",
                )
            )
            checks.append(
                Check(
                    "unanswered-but-committed requests replay on retry",
                    not bad_retries and len(unread) <= bound,
                    f"{len(unread)} in flight at wrk's stop (bound {bound}), retried with their"
                    f" keys: {len(bad_retries)} bad; {len(sample)} answered ones replayed"
                    + (f" [{'; '.join(bad_retries[:3])}]" if bad_retries else ""),
                )
            )
            checks.append(
                Check(
                    "retries and replays wrote nothing",
                    sum(len(v) for v in after.values()) == sum(len(v) for v in db.values()),
                    f"{sum(len(v) for v in db.values())} movements before,"
                    f" {sum(len(v) for v in after.values())} after",
                )
            )

            levels = await conn.fetchval("SELECT coalesce(sum(quantity), 0) FROM stock_levels")
            ledger = await conn.fetchval("SELECT coalesce(sum(delta), 0) FROM movements")
            wrk_sum = await conn.fetchval(
                "SELECT coalesce(sum(delta), 0) FROM movements WHERE reference LIKE 'wrk-%'"
            )
            pg_sum, pg_count = await conn.fetchrow(
                "SELECT coalesce(sum(delta), 0), count(*) FROM movements"
                " WHERE reference = 'pgbench'"
            )
            mismatched = await conn.fetchval(
                """
                SELECT count(*) FROM stock_levels s
                FULL JOIN (SELECT product_id, location_id, sum(delta) AS d FROM movements
                           GROUP BY product_id, location_id) m USING (product_id, location_id)
                WHERE coalesce(s.quantity, 0) <> coalesce(m.d, 0) OR s.quantity < 0
                """
            )
            client_sum = sum(seen.values())
            checks.append(
                Check(
                    "units: levels == ledger == 201 answers",
                    levels == ledger == self.baseline_units + client_sum + pg_sum
                    and wrk_sum == client_sum,
                    f"sum(levels)={levels} sum(movements)={ledger} (seed {self.baseline_units});"
                    f" API: 201 quantities {client_sum}, its ledger {wrk_sum};"
                    f" pgbench ledger {pg_sum}",
                )
            )
            checks.append(
                Check(
                    "every level equals its ledger, none negative",
                    mismatched == 0,
                    f"{mismatched} levels off",
                )
            )
            audit = await conn.fetch(
                """
                SELECT m.id, count(j.id) AS jobs FROM movements m
                LEFT JOIN jobs j ON j.kind = 'audit'
                    AND j.payload->>'action' = 'inventory.restocked'
                    AND (j.payload->'payload'->>'movement_id')::bigint = m.id
                WHERE m.reference LIKE 'wrk-%' GROUP BY m.id
                """
            )
            orphans = await conn.fetchval(
                """
                SELECT count(*) FROM jobs j
                WHERE j.kind = 'audit' AND j.payload->'payload'->>'reference' LIKE 'wrk-%'
                  AND NOT EXISTS (SELECT 1 FROM movements m
                                  WHERE m.id = (j.payload->'payload'->>'movement_id')::bigint)
                """
            )
            not_one = sum(1 for row in audit if row["jobs"] != 1)
            checks.append(
                Check(
                    "one audit job per accepted restock",
                    not_one == 0 and orphans == 0,
                    f"{len(audit)} movements: {not_one} without exactly one audit job,"
                    f" {orphans} audit jobs without a movement",
                )
            )
            keys = await conn.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'wrk-%' AND status_code = 201"
            )
            checks.append(
                Check(
                    "one stored Idempotency-Key per accepted restock",
                    keys == len(after),
                    f"{keys} keys, {len(after)} accepted restocks",
                )
            )
            checks.append(
                Check(
                    "pgbench: one movement per restock statement",
                    abs(pg_count - self.pgbench_processed) <= self.args.pgbench_clients * MAX_GROUP,
                    f"{pg_count} movements, {self.pgbench_processed} statements reported",
                )
            )
        finally:
            await conn.close()
        return checks

    # --- cleanup -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.api is not None and self.api.poll() is None:
            log("stopping the API")
            try:
                os.killpg(self.api.pid, signal.SIGTERM)
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.api.pid, signal.SIGKILL)
                self.api.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self.api_log is not None:
            self.api_log.close()
        if self.db_created:
            log(f"dropping database {self.db_name}")
            try:
                asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            except Exception as exc:
                log(f"could not drop {self.db_name}: {exc}")
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            names = list(client.scan_iter(match=f"*{self.queue_name}*", count=1000))
            if names:
                client.delete(*names)
            log(f"deleted {len(names)} Redis key(s) matching *{self.queue_name}*")
            client.close()
        except Exception as exc:
            log(f"could not clean Redis: {exc}")


def summarise_profile(raw: Path, top: int = 30) -> str:
    """Inclusive and self shares of the event-loop thread's samples (py-spy raw format)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or "WorkerThread.run" in stack:  # anyio's idle thread pool
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "profile: no samples"
    out = [f"profile: {total} samples of the event-loop thread", "  inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["  self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    bench: Bench,
    ceiling: LoadResult,
    random_: LoadResult,
    hot: LoadResult,
    pg: dict[str, float],
    grouped: dict[str, float],
    checks: list[Check],
) -> tuple[str, bool, bool]:
    a = bench.args
    ratios = [
        ("restock/ceiling", random_.rps / ceiling.rps, f">= {TARGET_VS_CEILING:.2f}", None),
        ("restock/pgbench", random_.rps / pg["tps"], f">= {TARGET_VS_PGBENCH:.2f}", None),
        ("hot/random", hot.rps / random_.rps, f">= {TARGET_HOT_VS_RANDOM:.2f}", None),
        ("p99/p50 random", random_.p99_ms / random_.p50_ms, f"<= {TARGET_P99_OVER_P50:.0f}", 1),
        ("p99/p50 hot", hot.p99_ms / hot.p50_ms, f"<= {TARGET_P99_OVER_P50:.0f}", 1),
    ]
    passes = [
        ratios[0][1] >= TARGET_VS_CEILING,
        ratios[1][1] >= TARGET_VS_PGBENCH,
        ratios[2][1] >= TARGET_HOT_VS_RANDOM,
        ratios[3][1] <= TARGET_P99_OVER_P50,
        ratios[4][1] <= TARGET_P99_OVER_P50,
    ]
    perf_ok = all(passes)
    data_ok = all(c.ok for c in checks)
    lines = [
        "",
        f"Stockroom restock benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}"
        f"  {os.cpu_count()} CPUs  Python {platform.python_version()}",
        f"server: stockroom api --workers {bench.workers} (db pool {bench.pool_size}/worker);"
        f" load: wrk -t{a.threads} -c{a.connections} -d{a.duration}s ({a.warmup} s warm-up);"
        f" pgbench -c{a.pgbench_clients} -j{a.threads} -T{a.duration} -M prepared;"
        f" {a.products} SKUs, {a.hot} hot",
        "",
        f"{'figure':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req: API':>17}{'DB':>6}"
        f"{'WAL B/req':>11}{'FPI/req':>9}",
    ]
    for label, r in (
        ("ceiling  GET /healthz", ceiling),
        ("restock  random SKUs", random_),
        (f"restock  {a.hot} hot SKUs", hot),
    ):
        lines.append(
            f"{label:<34}{r.rps:>9.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.cpu_ms_per_req:>17.2f}"
            f"{r.db_cpu_ms_per_req:>6.2f}{r.wal_bytes_per_req:>11.0f}{r.fpi_per_req:>9.2f}"
        )
    for label, row, unit, note in (
        ("pgbench  same SQL transaction", pg, "(TPS, avg ms)", "DB: all but pgbench's own CPU"),
        (
            f"pgbench  the same, {MAX_GROUP} per commit",
            grouped,
            "(/s, txn ms)",
            "one pipelined transaction, as the API's group commit",
        ),
    ):
        lines.append(
            f"{label:<34}{row['tps']:>9.0f}{row['latency_ms']:>9.1f}{unit:>15}{'-':>8}"
            f"{row['db_cpu_ms']:>6.2f}{row['wal_bytes']:>11.0f}{row['fpi']:>9.2f}"
            f"   ({row['failed']:.0f} failed; {note})"
        )
    lines.append(
        "restocks per commit in the API (group commit): "
        f"{random_.per_commit:.1f} random SKUs, {hot.per_commit:.1f} hot"
    )
    lines.append(
        "the API's database connections, share of time waiting for: "
        + ", ".join(f"{kind} {share:.0%}" for kind, share in random_.waits.items() if share)
        + " (random SKUs)"
    )
    other = max(r.other_load for r in (ceiling, random_, hot))
    lines.append(
        f"other processes on this machine used up to {other:.2f} of {os.cpu_count()} cores"
        " during the wrk runs"
        + ("  (WARNING: figures disturbed; rerun on a quiet machine)" if other > 0.15 else "")
    )
    lines += ["", f"{'ratio':<34}{'value':>9}{'target':>10}   result"]
    for (label, value, target, _), ok in zip(ratios, passes, strict=True):
        lines.append(f"{label:<34}{value:>9.2f}{target:>10}   {mark(ok)}")
    lines.append(
        f"{f'restock/pgbench {MAX_GROUP} per commit':<34}{random_.rps / grouped['tps']:>9.2f}"
        f"{'-':>10}   (no target: against the database's ceiling with group commit)"
    )
    lines += ["", "correctness"]
    for c in checks:
        lines.append(f"  {mark(c.ok)}  {c.name}: {c.detail}")
    lines += [
        "",
        f"performance targets: {mark(perf_ok)}   correctness: {mark(data_ok)}",
    ]
    return "\n".join(lines), perf_ok, data_ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("STOCKROOM_BENCH_WORKERS", "1"))
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads and pgbench -j")
    parser.add_argument(
        "--pgbench-clients",
        type=int,
        default=None,
        help="pgbench clients; default: the API's DB connections (pool size x workers), the"
        " concurrency the database sees from the API",
    )
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--hot", type=int, default=5, help="how many hot SKUs")
    parser.add_argument(
        "--seed-keys", type=int, default=50_000, help="stored Idempotency-Keys before the load"
    )
    parser.add_argument("--budget", type=int, default=200, help="stop after this many seconds")
    parser.add_argument("--keep-logs", action="store_true", help="keep wrk/pgbench/API logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the figures, profile the API with py-spy during one more restock run",
    )
    args = parser.parse_args(argv)

    bench = Bench(
        args=args,
        admin_url=os.environ.get("STOCKROOM_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        redis_url=os.environ.get("STOCKROOM_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        workers=args.workers,
    )
    if args.pgbench_clients is None:
        args.pgbench_clients = bench.pool_size * bench.workers

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BenchError(f"the benchmark exceeded its budget of {args.budget} s")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(args.budget)
    started = time.monotonic()
    failed = True
    try:
        bench.ensure_tools()
        bench.create_database()
        bench.start_api()
        ceiling = bench.measure(
            "ceiling", "ceiling.lua", bench.base_url + "/healthz", lambda _phase: []
        )
        random_ = bench.measure(
            "random", "restock.lua", bench.base_url, bench.restock_args("random")
        )
        hot = bench.measure("hot", "restock.lua", bench.base_url, bench.restock_args("hot"))
        pg = bench.pgbench()
        grouped = bench.pgbench(MAX_GROUP)
        if args.profile:
            bench.profile()
        log("verifying the data")
        checks = asyncio.run(bench.verify({"ceiling": ceiling, "random": random_, "hot": hot}))
        table, perf_ok, data_ok = report(bench, ceiling, random_, hot, pg, grouped, checks)
        print(table)
        failed = not data_ok
        status = 1 if not data_ok else (0 if perf_ok else 3)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        status = 1
    finally:
        signal.alarm(0)
        bench.cleanup()
        if args.keep_logs or args.profile or failed:
            log(f"logs kept in {bench.workdir}")
        else:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    log(f"finished in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
