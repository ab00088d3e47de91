"""Console sign-in at the HTTP level: the session cookie's flags, the key kept out of the
browser, CSRF on every form, expiry, a revoked key, sign-out."""

from __future__ import annotations

import hashlib
from http.cookies import SimpleCookie
from typing import Any

import httpx

from shared.db.database import Database
from tests.conftest import KeyFactory, count
from tests.console.support import COOKIE, form_field, key_of, sign_in, signed_in_csrf
from tests.worker_support import create_low_stock_jobs


def _set_cookie(response: httpx.Response, name: str) -> Any:
    for header in response.headers.get_list("set-cookie"):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        if name in parsed:
            return parsed[name]
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


async def test_every_console_page_needs_a_session(client: httpx.AsyncClient) -> None:
    for path in ("/console", "/console/workers", "/console/jobs", "/console/audit"):
        r = await client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/console/sign-in", path
    r = await client.get("/console/reports", headers={"X-Console-Fragment": "1"})
    assert r.status_code == 401 and "sign in" in r.text.lower()
    r = await client.post("/console/jobs/retry", data={"csrf_token": "x"})
    assert r.status_code == 401
    r = await client.get("/console/reports/00000000-0000-0000-0000-000000000000/download")
    assert r.status_code == 303


async def test_the_session_cookie_is_httponly_strict_and_holds_no_key(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    key = key_of(admin)
    r = await sign_in(client, key)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookie = _set_cookie(r, COOKIE)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/console"
    assert not cookie["secure"]  # plain HTTP here; see the HTTPS test
    assert int(cookie["max-age"]) == 8 * 3600
    token = cookie.value
    secret = key.split("_", 2)[2]
    assert secret not in token and key not in r.headers.get("location", "")
    assert key not in str(r.headers)
    # the database keeps only the token's hash
    assert await count(db, "SELECT count(*) FROM console_sessions") == 1
    stored = hashlib.sha256(token.encode()).digest()
    assert await count(db, "SELECT count(*) FROM console_sessions WHERE token_hash = $1", stored)
    page = await client.get("/console")
    assert page.status_code == 200 and key not in page.text and secret not in page.text
    assert "Signed in as" in page.text and "admin" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_the_session_cookie_is_secure_over_https(app: Any, admin: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://stockroom.test") as c:
        r = await sign_in(c, key_of(admin))
    assert r.status_code == 303
    assert _set_cookie(r, COOKIE)["secure"] is True


async def test_sign_in_refuses_unknown_keys_and_keys_without_admin(
    client: httpx.AsyncClient, make_key: KeyFactory, db: Database
) -> None:
    reader = key_of(await make_key("jobs:read", "jobs:write", name="reader"))
    for key in (reader, "sr_000000000000_nope", "", "x" * 300):
        r = await sign_in(client, key)
        assert r.status_code == 401, key
        assert "does not hold admin" in r.text
        assert COOKIE not in r.cookies
    assert await count(db, "SELECT count(*) FROM console_sessions") == 0


async def test_the_sign_in_form_needs_its_own_token(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    # a post from elsewhere has neither the form's token nor its cookie
    r = await client.post("/console/sign-in", data={"api_key": key_of(admin)})
    assert r.status_code == 403 and COOKIE not in r.cookies
    form = await client.get("/console/sign-in")
    client.cookies.clear()  # the token without its cookie
    r = await client.post(
        "/console/sign-in",
        data={"sign_in_token": form_field(form.text, "sign_in_token"), "api_key": key_of(admin)},
    )
    assert r.status_code == 403 and COOKIE not in r.cookies


async def test_a_form_without_the_sessions_csrf_token_is_refused(
    client: httpx.AsyncClient, app: Any, admin: dict[str, str], db: Database
) -> None:
    [job_id] = await create_low_stock_jobs(db, "CSRF-1")
    csrf = await signed_in_csrf(client, key_of(admin))
    # another session's token is no better than none
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockroom.test") as other:
        other_csrf = await signed_in_csrf(other, key_of(admin))
    assert other_csrf != csrf
    for data in ({}, {"csrf_token": ""}, {"csrf_token": other_csrf}, {"csrf_token": csrf[:-1]}):
        r = await client.post(f"/console/jobs/{job_id}/cancel", data=data)
        assert r.status_code == 403, data
        assert "CSRF" in r.text
    sql = "SELECT count(*) FROM jobs WHERE id = $1 AND status = 'queued'"
    assert await count(db, sql, job_id) == 1
    r = await client.post(f"/console/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert await count(db, sql, job_id) == 0


async def test_an_expired_session_signs_the_console_out(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    csrf = await signed_in_csrf(client, key_of(admin))
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    r = await client.get("/console")
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"
    r = await client.post("/console/jobs/retry", data={"csrf_token": csrf})
    assert r.status_code == 401


async def test_revoking_the_key_ends_its_sessions(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    await signed_in_csrf(client, key_of(admin))
    assert (await client.get("/console/workers")).status_code == 200
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
    r = await client.get("/console/workers")
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"


async def test_sign_out_ends_the_session(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    csrf = await signed_in_csrf(client, key_of(admin))
    token = client.cookies[COOKIE]
    r = await client.post("/console/sign-out", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"
    cleared = _set_cookie(r, COOKIE)
    assert cleared.value == "" and int(cleared["max-age"]) == 0
    assert await count(db, "SELECT count(*) FROM console_sessions") == 0
    client.cookies.set(COOKIE, token, path="/console")  # the old token, replayed
    r = await client.get("/console")
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"
