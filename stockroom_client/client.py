"""``Client`` and ``AsyncClient``: one method per endpoint (built in ``calls``), safe
retries (``retry``), typed errors (``errors``), and the two things every caller writes
otherwise: waiting for a job, and downloading a report to a file."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypedDict, TypeVar, Unpack

import httpx

from stockroom_client import calls
from stockroom_client.calls import Call
from stockroom_client.errors import (
    ConnectionFailed,
    JobFailed,
    JobTimeout,
    error_for,
)
from stockroom_client.models import Job
from stockroom_client.retry import (
    RetryEvent,
    RetryHook,
    RetryPolicy,
    describe,
    log_retry,
    server_delay,
)

P = ParamSpec("P")
R = TypeVar("R")
USER_AGENT = "stockroom-client/0.1"
DEFAULT_TIMEOUT = 30.0
JobHook = Callable[[Job], None]


class Options(TypedDict, total=False):
    """The clients' keyword options. ``timeout``: seconds per attempt (default 30);
    ``retry``: attempts and backoff (``RetryPolicy()``); ``on_retry``: called before each
    retry (default: a warning on the ``stockroom_client`` logger); ``headers``: sent with
    every request."""

    timeout: float
    retry: RetryPolicy
    on_retry: RetryHook
    headers: dict[str, str]


class _Base:
    """What both clients share: the settings, the decision after each attempt, and the
    steps of waiting for a job."""

    def __init__(self, url: str, key: str | None, options: Options) -> None:
        self.retry = options.get("retry") or RetryPolicy()
        self.on_retry = options.get("on_retry") or log_retry
        headers = {"User-Agent": USER_AGENT, **options.get("headers", {})}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http_options: dict[str, Any] = {
            "base_url": url.rstrip("/"),
            "headers": headers,
            "timeout": options.get("timeout", DEFAULT_TIMEOUT),
        }

    def _after(
        self,
        call: Call[Any],
        attempt: int,
        response: httpx.Response | None,
        exc: Exception | None = None,
    ) -> float:
        """The wait before the next attempt; raises the error when there is none."""
        if response is not None and response.is_success:
            raise AssertionError("a success is not retried")
        delay = self.retry.delay_after(attempt, response)
        if delay is None:
            if response is None:
                raise ConnectionFailed(
                    f"{call.method} {call.path}: {describe(None, exc)}"
                    f" (after {attempt} attempt{'s' if attempt > 1 else ''})"
                ) from exc
            raise error_for(response)
        self.on_retry(RetryEvent(call.method, call.path, attempt, delay, describe(response, exc)))
        return delay

    @staticmethod
    def _request(call: Call[Any]) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": call.path,
            "params": call.params,
            "json": call.json,
            "content": call.content,
            "headers": call.headers,
        }


class _JobWatch:
    """The steps of ``wait_for_job``: each answer gives the finished job, or the wait before
    the next poll (the server's ``Retry-After``, or ``interval``)."""

    def __init__(self, timeout: float, interval: float, on_update: JobHook | None) -> None:
        self.timeout = timeout
        self.interval = interval
        self.on_update = on_update
        self.deadline = time.monotonic() + timeout

    def step(self, response: httpx.Response) -> Job | float:
        job = Job.model_validate_json(response.content)
        if self.on_update is not None:
            self.on_update(job)
        if job.status == "complete":
            return job
        if job.finished:
            raise JobFailed(job)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeout(job, self.timeout)
        return min(server_delay(response.headers) or self.interval, remaining)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A file written beside ``path`` and renamed onto it only once complete."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sync(build: Callable[P, Call[R]]) -> Callable[Concatenate[Client, P], R]:
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.send(build(*args, **kwargs))

    return method


def _async(build: Callable[P, Call[R]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[R]]:
    @functools.wraps(build)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.send(build(*args, **kwargs))

    return method


class Client(_Base):
    """The synchronous client: ``Client(url, key, **Options)``, as a context manager or
    ``close()``d. ``transport``: an httpx transport (tests, proxies)."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[Options],
    ) -> None:
        super().__init__(url, key, options)
        self._http = httpx.Client(transport=transport, **self._http_options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[R]) -> R:
        """Run one call, with retries, and read its answer."""
        return call.parse(self._execute(call))

    def _execute(self, call: Call[Any]) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(**self._request(call))
            except httpx.TransportError as exc:
                time.sleep(self._after(call, attempt, None, exc))
                continue
            if response.is_success:
                return response
            time.sleep(self._after(call, attempt, response))

    def wait_for_job(
        self,
        job_id: str | uuid.UUID,
        timeout: float = 300.0,
        *,
        interval: float = 1.0,
        on_update: JobHook | None = None,
    ) -> Job:
        """Poll the job until it finishes (honouring ``Retry-After``): the complete job, or
        ``JobFailed`` (failed or cancelled; ``.job``, ``.error``), or ``JobTimeout`` (a
        ``TimeoutError``). ``on_update`` sees every record polled (progress bars)."""
        watch = _JobWatch(timeout, interval, on_update)
        while True:
            step = watch.step(self._execute(calls.get_job(job_id)))
            if isinstance(step, Job):
                return step
            time.sleep(step)

    def download_report(self, report_id: str | uuid.UUID, path: str | os.PathLike[str]) -> Path:
        """Stream the report's file to ``path`` (written beside it, renamed at the end)."""
        call = Call("GET", f"{calls.API}/reports/{report_id}/download", lambda r: None)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._http.stream("GET", call.path) as response:
                    if response.is_success:
                        with _atomic_file(path) as out:
                            for chunk in response.iter_bytes():
                                out.write(chunk)
                        return Path(path)
                    response.read()
                    delay = self._after(call, attempt, response)
            except httpx.TransportError as exc:
                delay = self._after(call, attempt, None, exc)
            time.sleep(delay)

    create_product = _sync(calls.create_product)
    get_product = _sync(calls.get_product)
    list_products = _sync(calls.list_products)
    update_product = _sync(calls.update_product)
    archive_product = _sync(calls.archive_product)
    create_location = _sync(calls.create_location)
    list_locations = _sync(calls.list_locations)
    restock = _sync(calls.restock)
    restock_batch = _sync(calls.restock_batch)
    adjust = _sync(calls.adjust)
    transfer = _sync(calls.transfer)
    get_inventory = _sync(calls.get_inventory)
    list_movements = _sync(calls.list_movements)
    list_low_stock = _sync(calls.list_low_stock)
    import_csv = _sync(calls.import_csv)
    get_job = _sync(calls.get_job)
    list_jobs = _sync(calls.list_jobs)
    cancel_job = _sync(calls.cancel_job)
    retry_job = _sync(calls.retry_job)
    list_audit = _sync(calls.list_audit)
    request_report = _sync(calls.request_report)
    get_report = _sync(calls.get_report)
    queue_stats = _sync(calls.queue_stats)
    list_workers = _sync(calls.list_workers)


class AsyncClient(_Base):
    """The asyncio client: the same methods as ``Client``, awaited."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[Options],
    ) -> None:
        super().__init__(url, key, options)
        self._http = httpx.AsyncClient(transport=transport, **self._http_options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[R]) -> R:
        """Run one call, with retries, and read its answer."""
        return call.parse(await self._execute(call))

    async def _execute(self, call: Call[Any]) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(**self._request(call))
            except httpx.TransportError as exc:
                await asyncio.sleep(self._after(call, attempt, None, exc))
                continue
            if response.is_success:
                return response
            await asyncio.sleep(self._after(call, attempt, response))

    async def wait_for_job(
        self,
        job_id: str | uuid.UUID,
        timeout: float = 300.0,  # noqa: ASYNC109 (the deadline spans many polls and sleeps)
        *,
        interval: float = 1.0,
        on_update: JobHook | None = None,
    ) -> Job:
        """As ``Client.wait_for_job``."""
        watch = _JobWatch(timeout, interval, on_update)
        while True:
            step = watch.step(await self._execute(calls.get_job(job_id)))
            if isinstance(step, Job):
                return step
            await asyncio.sleep(step)

    async def download_report(
        self, report_id: str | uuid.UUID, path: str | os.PathLike[str]
    ) -> Path:
        """As ``Client.download_report``."""
        call = Call("GET", f"{calls.API}/reports/{report_id}/download", lambda r: None)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._http.stream("GET", call.path) as response:
                    if response.is_success:
                        with _atomic_file(path) as out:
                            async for chunk in response.aiter_bytes():
                                out.write(chunk)
                        return Path(path)
                    await response.aread()
                    delay = self._after(call, attempt, response)
            except httpx.TransportError as exc:
                delay = self._after(call, attempt, None, exc)
            await asyncio.sleep(delay)

    create_product = _async(calls.create_product)
    get_product = _async(calls.get_product)
    list_products = _async(calls.list_products)
    update_product = _async(calls.update_product)
    archive_product = _async(calls.archive_product)
    create_location = _async(calls.create_location)
    list_locations = _async(calls.list_locations)
    restock = _async(calls.restock)
    restock_batch = _async(calls.restock_batch)
    adjust = _async(calls.adjust)
    transfer = _async(calls.transfer)
    get_inventory = _async(calls.get_inventory)
    list_movements = _async(calls.list_movements)
    list_low_stock = _async(calls.list_low_stock)
    import_csv = _async(calls.import_csv)
    get_job = _async(calls.get_job)
    list_jobs = _async(calls.list_jobs)
    cancel_job = _async(calls.cancel_job)
    retry_job = _async(calls.retry_job)
    list_audit = _async(calls.list_audit)
    request_report = _async(calls.request_report)
    get_report = _async(calls.get_report)
    queue_stats = _async(calls.queue_stats)
    list_workers = _async(calls.list_workers)
