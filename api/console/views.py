"""How a console page is served: the session cookie, the CSRF check, the templates, and the
answers for a missing session, a database outage and a domain error (an HTML problem page).

A page is a ``load`` function from a ``ConsoleView`` (the signed-in request, with a database
connection) to its template's context; ``render`` does the rest. An action is a ``do``
function of a ``UnitOfWork`` acting as the session's key, the same unit of work the API's
mutations run in; ``act`` checks the CSRF token, commits, dispatches the jobs, redirects.
``signed_in`` is what both stand on."""

from __future__ import annotations

import asyncio
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from api.mutations import dispatch_new_jobs
from api.state import AppState
from shared.console import sessions
from shared.console.sessions import ConsoleSession
from shared.db.connection import Connection
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.errors import DomainError

COOKIE = "stockroom_console"
SIGN_IN_COOKIE = "stockroom_console_sign_in"
COOKIE_PATH = "/console"
FRAGMENT_HEADER = "x-console-fragment"
REFRESH_SECONDS = 5
# A console page waits this long for a database connection before it says PostgreSQL is down.
DATABASE_WAIT_SECONDS = 5.0
DATABASE_DOWN = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
MAX_FORM_FIELDS = 200

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "—"


def _age(value: datetime | None) -> str:
    if value is None:
        return "—"
    return seconds_text((datetime.now(UTC) - value).total_seconds()) + " ago"


def seconds_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _iso(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as a filter accepts it back."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


templates.env.filters["iso"] = _iso
templates.env.filters["utc"] = _utc
templates.env.filters["age"] = _age
templates.env.filters["seconds"] = seconds_text


@dataclass(frozen=True, slots=True)
class ConsoleView:
    """A signed-in console request: the app's state, a read connection, the session."""

    request: Request
    state: AppState
    conn: Connection
    session: ConsoleSession


Load = Callable[[ConsoleView], Awaitable[dict[str, Any]]]
Respond = Callable[[ConsoleView], Awaitable[Response]]


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.stockroom
    return state


def is_fragment(request: Request) -> bool:
    return request.headers.get(FRAGMENT_HEADER) == "1"


def page(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    """A template as a whole page, or as its ``content`` block for a refresh."""
    fragment = is_fragment(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"layout": "fragment.html" if fragment else "base.html", **context},
        status_code=status_code,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def problem_page(
    request: Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An error as a page for people; the same fields as the API's problem+json."""
    response = page(
        request,
        "problem.html",
        {"problem": {"status": status, "title": title, "detail": detail}},
        status_code=status,
    )
    response.headers.update(headers or {})
    return response


def database_down_page(request: Request) -> Response:
    return problem_page(
        request,
        503,
        "PostgreSQL is unreachable",
        "The console reads everything from PostgreSQL, which does not answer. This page"
        " tries again by itself; nothing is lost meanwhile.",
        {"Retry-After": str(REFRESH_SECONDS)},
    )


def sign_in_redirect(request: Request) -> Response:
    """No live session: a page goes to the sign-in form; a refresh or a form post is told
    401 (the refresh script then reloads the page, which redirects)."""
    if request.method == "GET" and not is_fragment(request):
        response: Response = RedirectResponse("/console/sign-in", status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response
    return problem_page(request, 401, "Signed out", "Your console session ended; sign in again.")


async def redis_up(state: AppState) -> bool:
    return await state.queue.ping()


def _here(request: Request) -> str:
    """This page's address without its notice: where its forms come back to."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "notice"]
    return request.url.path + (f"?{urllib.parse.urlencode(query)}" if query else "")


async def signed_in(request: Request, respond: Respond) -> Response:
    """``respond`` for a request with a live session; otherwise the way to the sign-in form.
    A domain error becomes its problem page; a database outage says so (503)."""
    state = app_state(request)
    token = request.cookies.get(COOKIE)
    if not token:
        return sign_in_redirect(request)
    try:
        async with state.db.acquire(timeout=DATABASE_WAIT_SECONDS) as conn:
            session = await sessions.find_session(conn, token)
            if session is None:
                return sign_in_redirect(request)
            return await respond(ConsoleView(request, state, conn, session))
    except DATABASE_DOWN:  # DatabaseUnavailable among them: before the other domain errors
        return database_down_page(request)
    except DomainError as exc:
        return problem_page(request, exc.status, exc.title, exc.detail)


async def render(request: Request, template: str, load: Load) -> Response:
    """The signed-in page ``template`` with the context ``load`` reads, and whether Redis
    answers (every page says when it does not)."""

    async def respond(view: ConsoleView) -> Response:
        context, redis_ok = await asyncio.gather(load(view), redis_up(view.state))
        context.update(
            session=view.session,
            redis_ok=redis_ok,
            refresh_seconds=REFRESH_SECONDS,
            now_utc=_utc(datetime.now(UTC)),
            here=_here(request),
        )
        return page(request, template, context)

    return await signed_in(request, respond)


async def read_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (the console's forms send nothing
    else), bounded by the app's body size limit."""
    body = (await request.body()).decode("utf-8", errors="replace")
    form: dict[str, list[str]] = {}
    for name, value in urllib.parse.parse_qsl(
        body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
    ):
        form.setdefault(name, []).append(value)
    return form


def first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def back_to(form: dict[str, list[str]], notice: str) -> str:
    """Where an action returns to: the console page the form names, with a notice."""
    back = first(form, "back") or "/console"
    parsed = urllib.parse.urlsplit(back)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith("/console"):
        back = "/console"
    separator = "&" if "?" in back else "?"
    return f"{back}{separator}{urllib.parse.urlencode({'notice': notice})}"


@dataclass(frozen=True, slots=True)
class ActionInput:
    """What a console form's action gets: the unit of work acting as the session's key, the
    form's fields, the session."""

    uow: UnitOfWork
    form: dict[str, list[str]]
    session: ConsoleSession


Action = Callable[[ActionInput], Awaitable[str]]


async def act(request: Request, do: Action) -> Response:
    """A console form: its CSRF token checked against the session's, ``do`` run in one
    transaction as the session's key (audited as the API's mutations are: the same
    ``UnitOfWork`` and ``Actor``), the jobs it wrote dispatched after the commit; then back to
    the page with ``do``'s notice (303)."""
    form = await read_form(request)

    async def respond(view: ConsoleView) -> Response:
        if not sessions.csrf_matches(view.session, first(form, "csrf_token")):
            return problem_page(
                request, 403, "Form expired", "The form's CSRF token is not this session's."
            )
        principal = view.session.principal
        actor = Actor(
            key_id=principal.key_id,
            key_name=principal.name,
            request_id=getattr(request.state, "request_id", None),
        )
        settings = view.state.settings
        uow = UnitOfWork(
            view.conn,
            actor,
            job_max_tries=settings.job_max_tries,
            webhooks_enabled=settings.webhook_url is not None,
        )
        async with view.conn.transaction():
            notice = await do(ActionInput(uow, form, view.session))
        if uow.new_jobs:
            await dispatch_new_jobs(view.state, uow.new_jobs)
        response = RedirectResponse(back_to(form, notice), status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response

    return await signed_in(request, respond)


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(24)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Strict, for the console's paths only; Secure when the request came
    over HTTPS (as uvicorn sees it: ``X-Forwarded-Proto`` counts only from the proxies
    ``--forwarded-allow-ips`` trusts)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
