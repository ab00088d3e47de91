"""When to try a request again, and after how long: capped, jittered exponential backoff on
connection errors and timeouts, on 429 and 503 (waiting what ``Retry-After`` or the
``RateLimit`` field asks, when they say), and on 502 and 504; never on any other answer. A
POST is safe to send again because it carries the same ``Idempotency-Key`` every time."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

log = logging.getLogger("stockroom_client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# 409 for this one reason only: the same request (same Idempotency-Key) is still running on
# the server — an attempt the client gave up on (a timeout, a dropped connection). Once it
# finishes, the retry gets its answer replayed.
IN_FLIGHT = "idempotency-key-in-flight"
_RATELIMIT_RESET = re.compile(r"(?:^|;)\s*t=(\d+)")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``on_retry`` before each new attempt."""

    method: str
    url: str
    attempt: int  # the attempt that just failed, from 1
    delay: float  # seconds until the next
    reason: str  # "503 Service Unavailable", "ConnectError: ..."


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts``: tries in all (1 = no retry). Backoff before try n+1: uniform in
    ``[0, min(cap, base * 2**(n-1))]`` (full jitter), or the server's delay when it gives one
    — unless that is longer than ``max_server_delay``, when the error is raised instead."""

    attempts: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    max_server_delay: float = 60.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)

    def delay_after(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or ``None``: do not retry. ``response``
        is ``None`` for a connection error or a timeout."""
        if attempt >= self.attempts:
            return None
        if response is None:
            return self.backoff(attempt)
        if response.status_code == 409 and _problem_slug(response) == IN_FLIGHT:
            return self.backoff(attempt)
        if response.status_code not in RETRY_STATUSES:
            return None
        asked = server_delay(response.headers)
        if asked is None:
            return self.backoff(attempt)
        return asked if asked <= self.max_server_delay else None


def server_delay(headers: httpx.Headers) -> float | None:
    """The wait a server asks for: ``Retry-After`` (seconds or an HTTP date), else the reset
    time of the IETF ``RateLimit`` field when its remaining quota is 0."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    limit = headers.get("ratelimit")
    if limit and re.search(r"(?:^|;)\s*r=0\b", limit):
        found = _RATELIMIT_RESET.search(limit)
        if found:
            return float(found.group(1))
    return None


def _problem_slug(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return ""
    return str(problem.get("type", "")).rsplit("/", 1)[-1] if isinstance(problem, dict) else ""


RetryHook = Callable[[RetryEvent], None]


def log_retry(event: RetryEvent) -> None:
    """The default ``on_retry``: one log line per retry."""
    log.warning(
        "%s %s: attempt %d failed (%s); retrying in %.2f s",
        event.method,
        event.url,
        event.attempt,
        event.reason,
        event.delay,
    )


def describe(response: httpx.Response | None, exc: BaseException | None) -> str:
    if response is not None:
        return f"{response.status_code} {response.reason_phrase}"
    return f"{type(exc).__name__}: {exc}"
