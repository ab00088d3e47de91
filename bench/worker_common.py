"""Shared plumbing of the worker benchmarks (``bench/worker_latency.py``,
``bench/worker_throughput.py``, ``bench/worker_audit_lag.py``).

Each benchmark gets a database of its own (``CREATE DATABASE``, ``stockroom migrate``) and a
queue name of its own on the shared Redis; ``Stack.cleanup`` stops the processes it started
(by pid), drops the database and deletes only the Redis keys of its queue and its jobs. It never
touches anything else on the shared servers.

Environment: ``STOCKROOM_BENCH_DATABASE_URL`` (admin URL, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``STOCKROOM_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = ROOT / ".venv" / "bin" / "python"
STOCKROOM = ROOT / ".venv" / "bin" / "stockroom"
WORKER_PROC = BENCH / "worker_proc.py"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class BenchError(Exception):
    """A step failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def libpq_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return scheme.split("+", 1)[0] + "://" + rest


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def proc_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the given live processes (0 for any that is gone)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_note() -> str:
    load1, load5, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load1:.2f} (1 min) {load5:.2f} (5 min)"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def install_budget(seconds: int) -> None:
    """SIGALRM after ``seconds`` raises BenchError (the caller's ``finally`` cleans up);
    SIGTERM/SIGINT exit through ``finally`` too."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BenchError(f"the benchmark exceeded its budget of {seconds} s")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(seconds)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """One benchmark's own database, queue name, child processes and temp dir."""

    prefix: str = "wbench"
    admin_url: str = field(
        default_factory=lambda: os.environ.get("STOCKROOM_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    redis_url: str = field(
        default_factory=lambda: os.environ.get("STOCKROOM_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    )
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="stockroom-wbench-"))
    )
    db_created: bool = False
    procs: list[Proc] = field(default_factory=list)
    extra_redis_patterns: list[str] = field(default_factory=list)

    @property
    def db_name(self) -> str:
        return f"stockroom_{self.prefix}_{self.run_id}"

    @property
    def queue_name(self) -> str:
        return f"stockroom-{self.prefix}-{self.run_id}"

    @property
    def db_url(self) -> str:
        return libpq_url(with_database(self.admin_url, self.db_name))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        env.update(
            STOCKROOM_DATABASE_URL=self.db_url,
            STOCKROOM_REDIS_URL=self.redis_url,
            STOCKROOM_QUEUE_NAME=self.queue_name,
            STOCKROOM_ENV="production",
            STOCKROOM_LOG_FORMAT="json",
        )
        env.update(extra)
        return env

    # --- database ----------------------------------------------------------------------------

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(libpq_url(self.admin_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create_database(self) -> None:
        log(f"creating database {self.db_name} (queue {self.queue_name})")
        asyncio.run(self._admin(f'CREATE DATABASE "{self.db_name}"'))
        self.db_created = True
        self.run_cmd([STOCKROOM, "migrate"], timeout=90, what="stockroom migrate")

    def run_cmd(self, cmd: Sequence[str | Path], *, timeout: float, what: str, **env: str) -> str:
        try:
            proc = subprocess.run(
                [str(c) for c in cmd],
                env=self.env(**env),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{what} took longer than {timeout:.0f} s") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise BenchError(f"{what} failed ({proc.returncode}):\n  " + "\n  ".join(tail))
        return proc.stdout

    # --- processes ---------------------------------------------------------------------------

    def start(self, name: str, cmd: Sequence[str | Path], **env: str) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        popen = subprocess.Popen(
            [str(c) for c in cmd],
            env=self.env(**env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.workdir,  # no stray .env is read
        )
        proc = Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 25) -> None:
        """SIGTERM the process we started (by pid), SIGKILL it if it does not exit."""
        if proc.popen.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                os.kill(proc.pid, signal.SIGCONT)  # in case the bench had paused it
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
            except ProcessLookupError:
                pass
        proc.log_file.close()
        if proc in self.procs:
            self.procs.remove(proc)

    @staticmethod
    def pause(*procs: Proc) -> None:
        """SIGSTOP processes we started: an idle worker of another configuration must not
        take CPU (2 CPUs here) while one configuration is measured."""
        for proc in procs:
            os.kill(proc.pid, signal.SIGSTOP)

    @staticmethod
    def resume(*procs: Proc) -> None:
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)

    def check_alive(self, *procs: Proc) -> None:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise BenchError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")

    def wait_for_key(self, pattern: str, count: int, procs: Sequence[Proc], timeout: float) -> None:
        """Wait until ``count`` Redis keys match ``pattern`` (worker heartbeats / ready keys)."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.check_alive(*procs)
                if len(list(client.scan_iter(match=pattern, count=1000))) >= count:
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise BenchError(
            f"{count} process(es) not ready within {timeout:.0f} s:\n"
            + "\n".join(p.tail() for p in procs)
        )

    def start_ours(
        self, name: str, *, handler: bool = True, options: Sequence[str] = (), **env: str
    ) -> Proc:
        """One worker process: ``stockroom worker`` itself, or (``handler``) the same worker
        built by ``bench/worker_proc.py`` with a no-op handler for kind ``bench`` (and the
        ``options`` of ``worker_proc.py ours``)."""
        cmd: list[str | Path] = (
            [PYTHON, WORKER_PROC, "ours", *options] if handler else [STOCKROOM, "worker"]
        )
        return self.start(name, cmd, **env)

    def wait_ours_ready(
        self, procs: Sequence[Proc], timeout: float = 30, queue: str | None = None
    ) -> None:
        """Every process has written its heartbeat (``Queue.heartbeat``, from on_startup)."""
        queue = queue or self.queue_name
        self.wait_for_key(f"stockroom:{queue}:worker:*", len(procs), procs, timeout)

    def start_raw(self, name: str, queue: str, *, poll_delay: float, max_jobs: int) -> Proc:
        cmd: list[str | Path] = [
            PYTHON, WORKER_PROC, "raw", "--queue", queue,
            "--poll-delay", str(poll_delay), "--max-jobs", str(max_jobs),
        ]  # fmt: skip
        return self.start(name, cmd)

    def wait_raw_ready(self, queue: str, procs: Sequence[Proc], timeout: float = 30) -> None:
        self.wait_for_key(f"{queue}:ready:*", len(procs), procs, timeout)

    # --- cleanup -----------------------------------------------------------------------------

    async def _job_ids(self) -> list[str]:
        conn = await asyncpg.connect(self.db_url)
        try:
            return [str(r[0]) for r in await conn.fetch("SELECT id FROM jobs")]
        finally:
            await conn.close()

    def cleanup(self, keep_logs: bool = False) -> None:
        """Stop our processes, drop our database, delete our Redis keys; remove the logs
        unless ``keep_logs`` (a failed run keeps them and says where)."""
        signal.alarm(0)
        for proc in list(self.procs):
            log(f"stopping {proc.name} (pid {proc.pid})")
            self.stop(proc, timeout=10)
        job_ids: set[str] = set()
        if self.db_created:
            try:
                job_ids = set(asyncio.run(self._job_ids()))
            except Exception as exc:
                log(f"could not list job ids: {exc}")
            log(f"dropping database {self.db_name}")
            try:
                asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            except Exception as exc:
                log(f"could not drop {self.db_name}: {exc}")
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            names: set[bytes] = set()
            for pattern in [f"*{self.queue_name}*", *self.extra_redis_patterns]:
                names.update(client.scan_iter(match=pattern, count=1000))
            if job_ids:  # run_job's ARQ ids are "<job uuid>:<generation>"
                for key in client.scan_iter(match="arq:*", count=5000):
                    parts = key.decode(errors="replace").split(":")
                    if len(parts) >= 3 and parts[-2] in job_ids:
                        names.add(key)
            for i in range(0, len(names), 1000):
                client.delete(*list(names)[i : i + 1000])
            log(f"deleted {len(names)} Redis key(s) of this run")
            client.close()
        except Exception as exc:
            log(f"could not clean Redis: {exc}")
        if keep_logs:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_bench(stack: Stack, body: Callable[[], bool]) -> int:
    """Run a benchmark's ``body`` (``True``: its targets are met), then clean its stack up
    (keeping the logs of a failed run). Exit status: 0 met, 3 missed, 1 an error."""
    started = time.monotonic()
    status = 1
    try:
        status = 0 if body() else 3
    except BenchError as exc:
        log(f"FAILED: {exc}")
        status = 1
    finally:
        stack.cleanup(keep_logs=status == 1)
    log(f"finished in {time.monotonic() - started:.0f} s")
    return status


async def write_jobs(conn: Any, tag: str, jobs: Sequence[tuple[Any, dict[str, Any]]]) -> Any:
    """Jobs (kind, payload) written by ``create_job`` in the open transaction of ``conn``, as
    a request writes them; returns the unit of work (its ``new_jobs`` to dispatch)."""
    from shared.db.unit_of_work import Actor, UnitOfWork
    from shared.jobs.outbox import create_job

    uow = UnitOfWork(conn, Actor.system(tag))
    for kind, payload in jobs:
        await create_job(uow, kind, payload, 5)
    return uow
