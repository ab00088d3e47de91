"""Fast lanes: the happy path of a hot mutation (restock) served before the framework's stack.

A route with ``mutates(..., at_once=...)`` does its whole happy path in one statement
(``idempotency.at_once``). Served through FastAPI, that statement was about half of the API's
CPU per restock; the other half was the stack around it: Starlette's exception middleware,
routing through the included routers, FastAPI's request and response objects. The lane, a
plain ASGI middleware inside the request id and the metrics (so that both, and the access
log, are as for any request), runs that statement itself for a request that is plainly in
order, and hands everything else to the framework, which answers as it always does:

- another method or path, a ``root_path``, an ``Origin`` (CORS), no ``Content-Length`` or one
  over the body limit, no bearer token: handed over before the body is read;
- a body that is not valid JSON for the route, a key or caller that the statement does not
  accept, a key in use, an unknown SKU...: the statement writes nothing
  (``idempotency.run_at_once``) and the request is handed over with its body, marked
  (``AT_ONCE_TRIED``) so that the general way does not try the statement again.

Either way the answer is the one the framework gives: the lane sends the at-once runner's
``response``, as the general way does (tests compare both)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastapi import APIRouter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AT_ONCE_TRIED, AppState, AtOnceRunner, MutationRoute, bearer_token
from shared import idempotency
from shared.auth.keys import parse_token

_WANTED = frozenset(
    (b"authorization", b"content-length", b"content-type", b"idempotency-key", b"origin")
)


def at_once_lanes(prefix: str, routers: Iterable[APIRouter]) -> dict[str, AtOnceRunner]:
    """The lanes of ``routers`` (included under ``prefix``): each POST route with an
    ``at_once`` statement, by its full path."""
    lanes: dict[str, AtOnceRunner] = {}
    for router in routers:
        for route in router.routes:
            if not isinstance(route, MutationRoute) or route.methods != {"POST"}:
                continue
            runner = route.at_once_runner()
            if runner is not None:
                lanes[prefix + route.path] = runner
    return lanes


class AtOnceLanes:
    """ASGI middleware serving ``lanes`` (full path -> runner) as the module says."""

    def __init__(self, app: ASGIApp, lanes: Mapping[str, AtOnceRunner], max_bytes: int) -> None:
        self.app = app
        self.lanes = dict(lanes)
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            runner = self.lanes.get(scope["path"])
            if runner is not None:
                await self._serve(runner, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, runner: AtOnceRunner, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in headers:  # the first, as Starlette reads them
                headers[name] = value
        length = headers.get(b"content-length", b"")
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        material = parse_token(token) if token else None
        if (
            material is None
            or b"origin" in headers
            or not length.isdigit()
            or int(length) > self.max_bytes
        ):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: the framework says
                await self._hand_over(scope, messages, receive, send)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        raw_key = headers.get(b"idempotency-key")
        key = raw_key.decode("latin-1") if raw_key is not None else None
        path: str = scope["path"]
        state: AppState = scope["app"].state.stockroom
        done = await runner(
            state,
            headers.get(b"content-type", b"").decode("latin-1"),
            scope.get("state", {}).get("request_id"),
            material,
            key,
            idempotency.fingerprint("POST", path, body) if key else b"",
            body,
        )
        if done is None:
            scope[AT_ONCE_TRIED] = True
            await self._hand_over(scope, messages, receive, send)
            return
        await runner.response(done)(scope, receive, send)

    async def _hand_over(
        self, scope: Scope, messages: list[Message], receive: Receive, send: Send
    ) -> None:
        """The framework serves the request, receiving first what the lane already read."""
        pending = iter(messages)

        async def replay() -> Message:
            for message in pending:
                return message
            return await receive()

        await self.app(scope, replay, send)
