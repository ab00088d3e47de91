"""Every route under /api/v1 — read from the app's own route table, so a new route cannot
slip through — answers 401 without a valid key and 403 without its scope."""

from __future__ import annotations

import re

import httpx
import pytest

from api.app import create_app
from shared.auth import service as keys_service
from shared.auth.keys import ALL_SCOPES
from shared.db.database import Database
from shared.urls import API_PREFIX
from tests.conftest import Env, KeyFactory

OPEN_PATHS = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/docs",
    "/api/redoc",
    "/api/openapi.json",
    "/api/docs/oauth2-redirect",
}


def _routes() -> list[tuple[str, str, str | None]]:
    """Every operation in the app's own OpenAPI document, with the scope it requires."""
    app = create_app(Env("postgresql://x@127.0.0.1/x", "redis://127.0.0.1:1/0", "q").settings())
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            scopes = [s for req in operation.get("security", []) for s in req.get("HTTPBearer", [])]
            found.append((method.upper(), path, scopes[0] if len(scopes) == 1 else None))
    return found


ROUTES = _routes()
PROTECTED = [r for r in ROUTES if r[1].startswith(API_PREFIX)]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)


def test_every_api_route_declares_a_scope() -> None:
    assert PROTECTED, "no routes found"
    for method, path, scope in PROTECTED:
        assert scope in ALL_SCOPES, f"{method} {path} has no scope guard"
    for _, path, _ in ROUTES:
        assert path.startswith(API_PREFIX) or path in OPEN_PATHS, path


@pytest.mark.parametrize(
    ("method", "path", "scope"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
async def test_missing_bad_and_revoked_keys_get_401(
    client: httpx.AsyncClient, db: Database, method: str, path: str, scope: str
) -> None:
    url = _concrete(path)
    async with db.pool.acquire() as conn:
        created = await keys_service.create_key(conn, "gone", [scope])
        assert await keys_service.revoke_key(conn, created.id)
    info = {"key": created.key}
    variants: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer sr_000000000000_wrongsecret"},
        {"Authorization": f"Bearer {info['key']}"},  # revoked
        {"Authorization": f"Bearer {info['key'][:-1]}x"},  # wrong secret, real prefix
    ]
    for headers in variants:
        r = await client.request(method, url, headers=headers, json={})
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 401


@pytest.mark.parametrize(
    ("method", "path", "scope"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
async def test_key_without_the_scope_gets_403(
    client: httpx.AsyncClient, make_key: KeyFactory, method: str, path: str, scope: str
) -> None:
    others = sorted(ALL_SCOPES - {scope, "admin"})
    headers = await make_key(*others)
    r = await client.request(method, _concrete(path), headers=headers, json={})
    assert r.status_code == 403, r.text
    assert r.json()["type"].endswith("/forbidden")


@pytest.mark.parametrize(
    ("method", "path", "scope"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED]
)
async def test_key_with_the_scope_or_admin_passes_auth(
    client: httpx.AsyncClient, make_key: KeyFactory, method: str, path: str, scope: str
) -> None:
    for headers in (await make_key(scope), await make_key("admin")):
        r = await client.request(method, _concrete(path), headers=headers, json={})
        assert r.status_code not in (401, 403), r.text


async def test_open_endpoints_need_no_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/api/openapi.json")).status_code == 200
    assert (await client.get("/api/docs")).status_code == 200
