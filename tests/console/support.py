"""Signing in to the console over HTTP, as a browser does: the form's token, the key, the
cookie the client then keeps."""

from __future__ import annotations

import re

import httpx

COOKIE = "stockroom_console"


def form_field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found is not None, f"no {name} field in the page"
    return found.group(1)


def key_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Post the sign-in form with ``key``; the answer (303 to /console when it worked)."""
    form = await client.get("/console/sign-in")
    assert form.status_code == 200, form.text
    return await client.post(
        "/console/sign-in",
        data={"sign_in_token": form_field(form.text, "sign_in_token"), "api_key": key},
    )


async def signed_in_csrf(client: httpx.AsyncClient, key: str) -> str:
    """Sign in; the session's CSRF token (as the pages render it into their forms)."""
    r = await sign_in(client, key)
    assert r.status_code == 303 and r.headers["location"] == "/console", r.text
    page = await client.get("/console/jobs")
    assert page.status_code == 200, page.text
    return form_field(page.text, "csrf_token")
