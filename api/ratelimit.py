"""Rate limits per API key (SPEC §4): ``RATE_LIMIT_REQUESTS`` per ``RATE_LIMIT_WINDOW_SECONDS``,
shared by every API replica through Redis, without a Redis round trip on the request's path.

Fixed windows, keyed by the token's public prefix (``sr_<prefix>_...``: no database lookup).
Each process counts locally and a background task synchronises every ``SYNC_INTERVAL``: one
pipelined ``INCRBY`` per key active in the window adds what the process counted since and
returns the total of every replica, which the process then counts from. Accuracy: a replica
learns of the others' requests one synchronisation late, so the replicas together can let
through at most (replicas - 1) times (a key's requests per replica per interval) over the limit,
and a replica's first requests for a key it had not yet seen in the window pass until its next
synchronisation. Answers 401 are not counted: a stranger who knows a key's prefix cannot use
up its owner's limit with wrong secrets.

Every answer to a request that bears a well-formed key, and is not 401, carries
``RateLimit-Policy: "default";q=<limit>;w=<window>`` and ``RateLimit: "default";r=<remaining>;
t=<seconds to reset>`` (IETF httpapi ratelimit headers); over the limit the answer is 429
problem+json with ``Retry-After``. Fail-open: while Redis does not answer the limiter never
refuses a request (it still counts, and hands its counts over when Redis is back)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem
from shared.auth.keys import parse_token

log = logging.getLogger("stockroom.api")

SYNC_INTERVAL = 0.1
REDIS_TIMEOUT = 1.0


@dataclass(slots=True)
class _Counter:
    """One key's window as this process knows it."""

    window: int
    shared: int = 0  # every replica's count, as Redis last said (ours included)
    in_flight: int = 0  # ours, being added in Redis by the running synchronisation
    pending: int = 0  # ours, since

    @property
    def used(self) -> int:
        return self.shared + self.in_flight + self.pending


@dataclass(slots=True)
class RateLimiter:
    redis: Redis
    namespace: str
    limit: int
    window_seconds: int
    healthy: bool = True
    _counters: dict[str, _Counter] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _syncing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_url(cls, url: str, namespace: str, limit: int, window_seconds: int) -> RateLimiter:
        redis = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        return cls(redis, namespace, limit, window_seconds)

    def policy(self) -> bytes:
        return f'"default";q={self.limit};w={self.window_seconds}'.encode()

    def counter(self, prefix: str, now: float) -> _Counter:
        """The key's counter for the window ``now`` is in (a new window starts at zero)."""
        window = int(now // self.window_seconds)
        counter = self._counters.get(prefix)
        if counter is None or counter.window != window:
            counter = self._counters[prefix] = _Counter(window)
        return counter

    def refuses(self, counter: _Counter) -> bool:
        """Whether the key has used its window up; never while Redis does not answer."""
        return counter.used >= self.limit and self.healthy

    def reset_seconds(self, now: float) -> int:
        return max(1, math.ceil(self.window_seconds - now % self.window_seconds))

    async def sync(self) -> None:
        """Add this process's counts in Redis and learn every replica's totals, for each key
        active in the current window, in one pipelined round trip (one at a time)."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        window = int(time.time() // self.window_seconds)
        for prefix in [p for p, c in self._counters.items() if c.window != window]:
            del self._counters[prefix]
        active = list(self._counters.items())
        if not active:
            return
        pipe = self.redis.pipeline(transaction=False)
        for prefix, counter in active:
            counter.in_flight, counter.pending = counter.pending, 0
            key = f"{self.namespace}:ratelimit:{prefix}:{counter.window}"
            pipe.incrby(key, counter.in_flight)
            pipe.expire(key, self.window_seconds + 1)
        try:
            totals = (await pipe.execute())[::2]
        except Exception as exc:
            for _, counter in active:
                counter.pending += counter.in_flight
                counter.in_flight = 0
            if self.healthy:
                log.warning("rate limiter: Redis does not answer (%s); not limiting", exc)
            self.healthy = False
            return
        for (_, counter), total in zip(active, totals, strict=True):
            counter.shared, counter.in_flight = int(total), 0
        if not self.healthy:
            log.info("rate limiter: Redis answers again; limiting")
        self.healthy = True

    async def _run(self) -> None:
        # Stopped by an event, not by cancellation: redis-py can turn a cancellation that
        # lands mid-command into a TimeoutError, which would leave this loop running.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SYNC_INTERVAL)
            try:
                await self.sync()  # the last one hands over the last counts
            except Exception:  # never let the loop die: limits would silently stop syncing
                log.exception("rate limiter: synchronisation failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            # a last sync gives up within REDIS_TIMEOUT (connect, then command)
            await asyncio.wait({self._task}, timeout=3 * REDIS_TIMEOUT)
            self._task.cancel()
        await self.redis.aclose()


def _key_prefix(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            material = parse_token(token.strip())
            return material.prefix if material is not None else None
    return None


class RateLimitMiddleware:
    """Applies ``limiter`` to every request bearing a well-formed API key (see the module).
    On the request's path: a dictionary lookup and a few additions, no I/O (~3 µs)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter
        self.policy = limiter.policy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = _key_prefix(scope["headers"]) if scope["type"] == "http" else None
        if prefix is None:
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        now = time.time()
        counter = limiter.counter(prefix, now)
        reset = limiter.reset_seconds(now)
        if limiter.refuses(counter):
            await self._refuse(reset, scope, receive, send)
            return

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 401:
                counter.pending += 1  # counted once answered, and only if authenticated
                remaining = max(0, limiter.limit - counter.used)
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"ratelimit-policy", self.policy),
                    (b"ratelimit", b'"default";r=%d;t=%d' % (remaining, reset)),
                ]
            await send(message)

        await self.app(scope, receive, send_with_fields)

    async def _refuse(self, reset: int, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.limiter
        response = problem(
            429,
            f"this API key made {limiter.limit} requests in the current "
            f"{limiter.window_seconds}-second window; retry in {reset} s",
            slug="rate-limited",
            title="Too many requests",
            headers={
                "Retry-After": str(reset),
                "RateLimit-Policy": self.policy.decode(),
                "RateLimit": f'"default";r=0;t={reset}',
            },
        )
        await response(scope, receive, send)
