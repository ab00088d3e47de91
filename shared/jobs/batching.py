"""One statement for many callers (``Batched``), and the retries of a job statement
(``retrying``): the worker's claims and completions and the webhooks' delivery log share them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

log = logging.getLogger("stockroom.worker")

_T = TypeVar("_T")
_In = TypeVar("_In")
_Out = TypeVar("_Out")

# Claims and outcome writes are retried for a while: the lease is renewed while an outcome is
# pending, so a database blip need not make a finished job run again.
OUTCOME_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


async def retrying(write: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    for delay in OUTCOME_RETRY_DELAYS:
        try:
            return await write()
        except Exception as exc:
            log.warning("a job statement failed; retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
    return await write()


class Batched(Generic[_In, _Out]):
    """One statement for many callers: the entries submitted while a statement is in flight
    (or in the same event-loop tick) are written together by the next one. A batch that fails
    is written again one entry at a time, with retries, so that one bad entry (or a blip)
    does not fail its neighbours."""

    def __init__(self, write: Callable[[list[_In]], Coroutine[Any, Any, list[_Out]]]) -> None:
        self._write_batch = write
        self._pending: list[tuple[_In, asyncio.Future[_Out]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, entry: _In) -> _Out:
        done: asyncio.Future[_Out] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await done

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)  # the entries of this tick join the first statement
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await self._write_batch([entry for entry, _ in batch])
                except Exception:
                    for entry in batch:
                        await self._write_one(*entry)
                    continue
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if not done.done():
                        done.set_result(outcome)
        finally:
            self._writer = None

    async def _write_one(self, entry: _In, done: asyncio.Future[_Out]) -> None:
        try:
            outcome: _Out
            (outcome,) = await retrying(lambda: self._write_batch([entry]))
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(outcome)
