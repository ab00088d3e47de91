"""Text PostgreSQL cannot store, refused at the edge: one plain ASGI middleware for every route.

PostgreSQL's ``text`` holds neither NUL (U+0000) nor a lone surrogate (no UTF-8 for it), and
either one reaching a statement was a 500. Rather than a check on each field of each schema
(one forgotten field is a 500 again), this middleware looks at the request's text as it
arrives, before any route, lane or schema sees it:

- the path and the query string (percent-decoded; invalid UTF-8 in either is refused too,
  where Starlette would have turned it into U+FFFD silently, and so is a parameter given
  twice, of which it would have taken the last, or one without a name);
- the body: a NUL byte in any body, and in a JSON body a ``\\u0000`` escape or a ``\\uD800``-
  ``\\uDFFF`` escape that is not half of a pair. Raw bytes needs no check: JSON is UTF-8, and
  invalid UTF-8 (an encoded surrogate included) or a raw control character is already
  invalid JSON. The body is checked as ``receive`` hands it over; a refused one makes
  ``receive`` raise ``UnstorableText`` (an HTTPException, which FastAPI's body reading passes
  on as it is), answered 422 by ``api.problems``, or here when it came from outside FastAPI
  (``api.lanes``).

The common body has no backslash-u at all: that is one ``in`` test per message."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import UnstorableText
from shared.types import unstorable_text

# An escape: its run of backslashes (odd: a real escape; even: escaped backslashes then a
# plain "u") and its four hex digits.
_ESCAPE = re.compile(rb"(\\+)u([0-9a-fA-F]{4})")
_LOW_SURROGATE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def json_text_problem(body: bytes) -> str | None:
    """Why a JSON document holds text PostgreSQL cannot store, else ``None``."""
    if b"\\u" not in body:
        return None
    paired_low_at = -1
    for match in _ESCAPE.finditer(body):
        if len(match[1]) % 2 == 0:
            continue
        code = int(match[2], 16)
        if code == 0:
            return "text must not contain NUL (U+0000)"
        if 0xD800 <= code <= 0xDBFF:
            if not _LOW_SURROGATE.match(body, match.end()):
                return "text must not contain a lone surrogate"
            paired_low_at = match.end()
        elif 0xDC00 <= code <= 0xDFFF and match.start(1) + len(match[1]) - 1 != paired_low_at:
            return "text must not contain a lone surrogate"
    return None


def path_problem(raw_path: bytes | None) -> str | None:
    """Why a raw (percent-encoded) path is not UTF-8 text: servers decode it with U+FFFD in
    place of what is not (uvicorn), so the decoded path alone cannot tell."""
    if not raw_path or b"%" not in raw_path:
        return None
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return "path is not valid UTF-8"
    return None


def query_problem(query: bytes) -> tuple[str, str] | None:
    """``(parameter, why)`` for a query string holding text PostgreSQL cannot store, or a
    parameter twice (no parameter of this API is a list: the framework would take the last
    one silently)."""
    if not query:
        return None
    try:
        pairs = parse_qsl(
            query.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        return "query", "query string is not valid UTF-8"
    seen = set()
    for name, value in pairs:
        why = unstorable_text(name) or unstorable_text(value)
        if why is not None:
            return name, why
        if name in seen or not name:
            return name, "a query parameter has a name and is given once"
        seen.add(name)
    return None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.partition(b";")[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class TextGuard:
    """ASGI middleware refusing text PostgreSQL cannot store with 422 (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._guard(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        why = unstorable_text(scope["path"]) or path_problem(scope.get("raw_path"))
        refused = UnstorableText(["path"], why) if why is not None else None
        if refused is None:
            found = query_problem(scope["query_string"])
            if found is not None:
                refused = UnstorableText(["query", found[0]], found[1])
        if refused is not None:
            await refused.response()(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        checked_receive = _checked_receive(receive, _is_json(scope["headers"]))
        try:
            await self.app(scope, checked_receive, tracking_send)
        except UnstorableText as exc:
            if started:
                raise
            await exc.response()(scope, receive, send)


def _checked_receive(receive: Receive, is_json: bool) -> Receive:
    """``receive``, raising ``UnstorableText`` for a body that holds such text. A body in
    several messages is checked whole at its last (an escape may straddle two)."""
    parts: list[bytes] = []

    async def checked() -> Message:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        if b"\x00" in chunk:
            raise UnstorableText(["body"], "body must not contain NUL bytes")
        if not is_json:
            return message
        more = message.get("more_body", False)
        if more or parts:
            parts.append(chunk)
        if not more:
            why = json_text_problem(b"".join(parts) if parts else chunk)
            parts.clear()
            if why is not None:
                raise UnstorableText(["body"], why)
        return message

    return checked
