"""Who is calling: the bearer token (checked for form before anything else), the read
connection a checked caller gets, and the scope check of read routes (``requires``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.security import HTTPBearer

from api.state import StateDep
from shared.auth.keys import KeyToken, parse_token
from shared.auth.service import Principal, authenticate
from shared.db.connection import Connection
from shared.errors import Forbidden, Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sr_...`")


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def presented_key(request: Request) -> KeyToken:
    """The API key the request presents, well formed, or 401 (no database work yet)."""
    token = bearer_token(request.headers.get("authorization"))
    key = parse_token(token) if token else None
    if key is None:
        raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
    return key


async def key_token_dependency(request: Request) -> KeyToken:
    return presented_key(request)


KeyTokenDep = Annotated[KeyToken, Depends(key_token_dependency)]


async def read_connection(_: KeyTokenDep, state: StateDep) -> AsyncIterator[Connection]:
    """A pooled connection for the request's reads (autocommit; each statement sees a
    consistent snapshot), taken only once the request presents a well-formed key."""
    async with state.db.acquire() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(read_connection, scope="function")]


class RequireScope:
    """Authenticates the caller and checks one scope: 401 without a valid key, 403 without
    the scope (``admin`` holds every scope)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        key: KeyTokenDep,
        conn: ConnDep,
        _: Annotated[Any, Depends(_bearer)],  # for OpenAPI's security scheme only
    ) -> Principal:
        # ``conn`` is the request's own connection (FastAPI caches ConnDep per request): a
        # second checkout while holding the first deadlocks once every connection is held by
        # a request waiting for its second.
        principal = await authenticate(conn, key)
        if principal is None:
            raise Unauthenticated("the API key is unknown or revoked")
        if not principal.allows(self.scope):
            raise Forbidden(f"this API key lacks the '{self.scope}' scope")
        request.state.principal = principal
        return principal


def requires(scope: str) -> Any:
    """Dependency marker for ``Annotated[Principal, requires(scope)]``: authenticate, check
    ``scope``; OpenAPI lists the scope as the operation's security requirement."""
    return params.Security(dependency=RequireScope(scope), scopes=[scope])
