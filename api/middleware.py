"""Plain ASGI middleware: request ids and the body size limit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from secrets import token_hex

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem
from shared.logs import request_id_var

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REQUEST_ID_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` (or makes one), exposes it to logs and jobs, echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                incoming = value.decode("latin-1")
                break
        # 32 random hex digits, as uuid4().hex spells them (a third of its cost)
        request_id = incoming if incoming and _REQUEST_ID_RE.match(incoming) else token_hex(16)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        header = (_REQUEST_ID_HEADER, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # as MutableHeaders sets it (ASGI header names are lower case), in half the time
                kept = [h for h in message.get("headers", ()) if h[0] != _REQUEST_ID_HEADER]
                message["headers"] = [*kept, header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` as the body streams past the limit; an HTTPException so that
    FastAPI's body parsing passes it on as it is (it turns other errors into 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_bytes} bytes")


class BodySizeLimitMiddleware:
    """413 for a body over ``max_bytes``, by ``Content-Length`` or as it streams in;
    ``larger``: another limit for the paths it names (an upload route, say)."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: Mapping[str, int] = {}) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.larger.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    break  # the server refuses it; counted as it streams, if ever
                if int(value) > max_bytes:
                    await self._reject(max_bytes, scope, receive, send)
                    return
                # the server delivers no more than the declared length: nothing to count
                await self.app(scope, receive, send)
                return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._reject(max_bytes, scope, receive, send)

    @staticmethod
    async def _reject(max_bytes: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"request body exceeds {max_bytes} bytes",
            slug="payload-too-large",
            title="Payload too large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
