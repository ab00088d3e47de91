"""Client fixtures: the client on the in-process app (ASGI), a real API process on a free
port, a proxy in front of it that can drop answers, and products to work with."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.db.database import Database
from stockroom_client import AsyncClient, RetryEvent, RetryPolicy
from tests.conftest import Env, KeyFactory
from tests.servers import api_answers, api_process


@pytest.fixture
async def key(make_key: KeyFactory) -> str:
    headers = await make_key("admin", name="client-tests")
    return headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def retries() -> list[RetryEvent]:
    return []


@pytest.fixture
async def sr(app: Any, key: str, retries: list[RetryEvent]) -> AsyncIterator[AsyncClient]:
    """The async client on the in-process app, with fast retries, recording each retry."""
    async with AsyncClient(
        "http://stockroom.test",
        key,
        transport=httpx.ASGITransport(app=app),
        retry=RetryPolicy(attempts=3, backoff_base=0.05),
        on_retry=retries.append,
    ) as client:
        yield client


@pytest.fixture
async def products(db: Database) -> list[str]:
    """Three products and a second location, written directly."""
    skus = ["BOLT-M8", "NUT-M8", "WASHER-M8"]
    async with db.pool.acquire() as conn:
        for sku in skus:
            await conn.execute(
                "INSERT INTO products (sku, title, unit_price) VALUES ($1, $2, 1.50)", sku, sku
            )
        await conn.execute("INSERT INTO locations (code) VALUES ('DOCK-2')")
    return skus


async def on_hand(db: Database, sku: str) -> int:
    async with db.pool.acquire() as conn:
        value = await conn.fetchval(
            "SELECT coalesce(sum(s.quantity), 0) FROM stock_levels s"
            " JOIN products p ON p.id = s.product_id WHERE p.sku = $1",
            sku,
        )
    return int(value)


@pytest.fixture(scope="session")
def api_url(env: Env) -> Iterator[str]:
    """A real API process (uvicorn) on a free port, started once for the client's tests."""
    with api_process(env.process_env()) as (url, _):
        asyncio.run(api_answers(url))
        yield url


class DroppingProxy:
    """A TCP proxy to the API that, for the next ``drop_answers`` connections, lets the
    request through and then resets the connection as soon as the answer starts to come
    back: the server has done (and committed) the work, the client never hears of it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop_answers = 0
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        drop = self.drop_answers > 0
        if drop:
            self.drop_answers -= 1

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, dropping: bool
        ) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if dropping:
                        self.dropped += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, drop))


@pytest.fixture
async def proxy(api_url: str) -> AsyncIterator[DroppingProxy]:
    running = DroppingProxy(int(api_url.rsplit(":", 1)[1]))
    await running.start()
    yield running
    await running.close()


REPO = Path(__file__).resolve().parents[2]
CLIENT_DISTRIBUTIONS = [
    "httpx",
    "pydantic",
    "rich",
    "anyio",
    "certifi",
    "httpcore",
    "h11",
    "idna",
    "sniffio",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "markdown-it-py",
    "mdurl",
    "pygments",
]


@pytest.fixture(scope="session")
def client_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only httpx, pydantic, rich and their own dependencies, at the pins of
    ``requirements.lock`` (uv installs them from its cache in about a second): the client
    runs from the repository's source with ``PYTHONPATH`` and nothing else."""
    root = tmp_path_factory.mktemp("client-only")
    pins = [
        line.split()[0]
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if line.split("==")[0] in CLIENT_DISTRIBUTIONS
    ]
    assert len(pins) >= 12, pins
    (root / "pins.txt").write_text("\n".join(pins))
    venv = root / "venv"
    python = venv / "bin" / "python"
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        install = [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            "-r",
            str(root / "pins.txt"),
        ]
        if subprocess.run([*install, "--offline"], capture_output=True).returncode != 0:
            subprocess.run(install, check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--no-deps"]
        subprocess.run([*pip, "-r", str(root / "pins.txt")], check=True)
    return python
