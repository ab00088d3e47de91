"""The ops console's pages and forms (SPEC §6): sign-in, overview, workers, jobs, audit,
reports. Reads go through the same services as the API's endpoints; cancel and retry through
``shared.jobs.service``, audited as the session's key (see ``api.console.views.act``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from api.console import chart
from api.console.views import (
    COOKIE,
    DATABASE_DOWN,
    DATABASE_WAIT_SECONDS,
    SECURITY_HEADERS,
    SIGN_IN_COOKIE,
    ActionInput,
    ConsoleView,
    act,
    app_state,
    clear_cookie,
    first,
    new_sign_in_token,
    page,
    read_form,
    render,
    set_cookie,
    signed_in,
)
from api.routers.reports import stored_file_response
from shared.audit import service as audit_service
from shared.auth.keys import Scope, parse_token
from shared.auth.service import authenticate
from shared.console import queries, sessions
from shared.errors import DomainError
from shared.jobs import service as jobs_service
from shared.jobs.kinds import JobKind, JobStatus
from shared.jobs.schemas import WorkerInfo
from shared.reports import service as reports_service

router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZE = 25
# A worker beats every 5 s (its key expires after 20 s): two beats missed and it is stale.
STALE_AFTER_SECONDS = 12
SIGN_IN_FORM_SECONDS = 3600
Text = Annotated[str | None, Query(max_length=100)]


class BadFilter(DomainError):
    status = 422
    type_slug = "validation-error"
    title = "Invalid filter"


def _blank_is_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _instant(name: str, value: str | None) -> datetime | None:
    """A time typed in a filter: RFC 3339, UTC when it names no offset."""
    value = _blank_is_none(value)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        raise BadFilter(f"{name}: not a time (RFC 3339, e.g. 2026-12-04T14:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- sign-in ---------------------------------------------------------------------------------


def _sign_in_form(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    """The form, with a fresh double-submit token: the same value in a cookie and the form
    (a site that cannot read our cookies cannot post the form)."""
    token = new_sign_in_token()
    response = page(request, "sign_in.html", {"sign_in_token": token, "error": error}, status_code)
    set_cookie(request, response, SIGN_IN_COOKIE, token, SIGN_IN_FORM_SECONDS)
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    return _sign_in_form(request)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """Exchange an ``admin`` API key for a session: the key is checked and forgotten; the
    browser keeps only the session's random token, in an HttpOnly cookie."""
    form = await read_form(request)
    expected = request.cookies.get(SIGN_IN_COOKIE)
    submitted = first(form, "sign_in_token")
    if not expected or submitted is None or not sessions.tokens_match(expected, submitted):
        return _sign_in_form(request, "The sign-in form expired; try again.", 403)
    state = app_state(request)
    key = parse_token((first(form, "api_key") or "").strip())
    try:
        async with state.db.acquire(timeout=DATABASE_WAIT_SECONDS) as conn:
            principal = await authenticate(conn, key) if key is not None else None
            if principal is None or not principal.allows(Scope.admin):
                return _sign_in_form(
                    request, "That key is unknown, revoked, or does not hold admin.", 401
                )
            hours = state.settings.console_session_hours
            token = await sessions.start_session(conn, principal.key_id, hours)
    except DATABASE_DOWN:
        return _sign_in_form(request, "PostgreSQL is unreachable; try again shortly.", 503)
    response = RedirectResponse("/console", status_code=303)
    response.headers.update(SECURITY_HEADERS)
    set_cookie(request, response, COOKIE, token, hours * 3600)
    clear_cookie(request, response, SIGN_IN_COOKIE)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    async def end(given: ActionInput) -> str:
        await sessions.end_session(given.uow.conn, given.session.id)
        return "Signed out."

    response = await act(request, end)
    if response.status_code == 303:
        response.headers["location"] = "/console/sign-in"
        clear_cookie(request, response, COOKIE)
    return response


# --- pages -----------------------------------------------------------------------------------


async def _workers(view: ConsoleView) -> list[dict[str, Any]] | None:
    """Live workers with ``stale`` marked, or ``None`` while Redis does not answer."""
    try:
        found = [WorkerInfo.model_validate(w) for w in await view.state.queue.live_workers()]
    except Exception:
        return None
    now = datetime.now(UTC)
    return [
        {
            "info": w,
            "stale": (now - w.last_heartbeat).total_seconds() > STALE_AFTER_SECONDS,
        }
        for w in sorted(found, key=lambda w: (w.host, w.pid))
    ]


@router.get("")
async def overview(request: Request) -> Response:
    async def load(view: ConsoleView) -> dict[str, Any]:
        stats = await jobs_service.queue_stats(view.conn)
        history = await queries.queue_history(view.conn)
        workers = await _workers(view)
        return {
            "nav": "overview",
            "stats": stats,
            "chart": chart.queue_chart(history),
            "workers": workers,
        }

    return await render(request, "overview.html", load)


@router.get("/workers")
async def workers(request: Request) -> Response:
    async def load(view: ConsoleView) -> dict[str, Any]:
        return {"nav": "workers", "workers": await _workers(view)}

    return await render(request, "workers.html", load)


def _status(value: str | None) -> JobStatus | None:
    value = _blank_is_none(value)
    try:
        return JobStatus(value) if value else None
    except ValueError:
        raise BadFilter(f"status: one of {', '.join(s.value for s in JobStatus)}") from None


@router.get("/jobs")
async def jobs(
    request: Request, status: Text = None, kind: Text = None, cursor: Text = None
) -> Response:
    async def load(view: ConsoleView) -> dict[str, Any]:
        chosen = _status(status)
        listed = await jobs_service.list_jobs(
            view.conn,
            status=chosen,
            kind=_blank_is_none(kind),
            limit=PAGE_SIZE,
            cursor=_blank_is_none(cursor),
        )
        return {
            "nav": "jobs",
            "page": listed,
            "status": chosen.value if chosen else "",
            "kind": _blank_is_none(kind) or "",
            "statuses": [s.value for s in JobStatus],
            "kinds": [k.value for k in JobKind],
            "failed_shown": [j.id for j in listed.items if j.status is JobStatus.failed],
            "microsecond": timedelta(microseconds=1),
        }

    return await render(request, "jobs.html", load)


@router.get("/audit")
async def audit(
    request: Request,
    action: Text = None,
    sku: Text = None,
    since: Text = None,
    until: Text = None,
    cursor: Text = None,
) -> Response:
    async def load(view: ConsoleView) -> dict[str, Any]:
        listed = await audit_service.list_entries(
            view.conn,
            action=_blank_is_none(action),
            sku=_blank_is_none(sku),
            since=_instant("since", since),
            until=_instant("until", until),
            limit=PAGE_SIZE,
            cursor=_blank_is_none(cursor),
        )
        filters = {"action": action, "sku": sku, "since": since, "until": until}
        return {
            "nav": "audit",
            "page": listed,
            "filters": {k: _blank_is_none(v) or "" for k, v in filters.items()},
        }

    return await render(request, "audit.html", load)


@router.get("/reports")
async def reports(request: Request, cursor: Text = None) -> Response:
    async def load(view: ConsoleView) -> dict[str, Any]:
        listed = await queries.list_reports(view.conn, PAGE_SIZE, _blank_is_none(cursor))
        return {"nav": "reports", "page": listed}

    return await render(request, "reports.html", load)


async def _report_file(request: Request, report_id: uuid.UUID, *, chart_png: bool) -> Response:
    """A report's download or chart, for the session (the API's own needs a bearer key)."""

    async def respond(view: ConsoleView) -> Response:
        stored = await reports_service.open_file(view.conn, report_id, chart=chart_png)
        return stored_file_response(view.state, stored)

    return await signed_in(request, respond)


@router.get("/reports/{report_id}/download")
async def report_download(request: Request, report_id: uuid.UUID) -> Response:
    return await _report_file(request, report_id, chart_png=False)


@router.get("/reports/{report_id}/chart.png")
async def report_chart(request: Request, report_id: uuid.UUID) -> Response:
    return await _report_file(request, report_id, chart_png=True)


# --- actions ---------------------------------------------------------------------------------


JOB_ACTIONS = {"cancel": jobs_service.cancel_job, "retry": jobs_service.retry_job}


@router.post("/jobs/{job_id}/{action}")
async def job_action(
    request: Request, job_id: uuid.UUID, action: Literal["cancel", "retry"]
) -> Response:
    """Cancel (queued or running) or retry (failed or cancelled) one job: the service
    functions of ``POST /api/v1/jobs/{id}/cancel`` and ``.../retry``."""

    async def run(given: ActionInput) -> str:
        job = await JOB_ACTIONS[action](given.uow, job_id)
        if action == "cancel":
            return f"Cancel requested for job {job.id} ({job.status.value})."
        return f"Job {job_id} retried as job {job.id}."

    return await act(request, run)


def _job_ids(form: dict[str, list[str]]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(v) for v in form.get("job_id", [])[: PAGE_SIZE * 4]]
    except ValueError:
        raise BadFilter("job_id: not a job id") from None


@router.post("/jobs/retry")
async def retry_jobs(request: Request) -> Response:
    """Bulk retry: the failed jobs a filtered page showed, each as ``retry_job`` does (one
    audit event each), in one transaction. A job no longer failed is skipped."""

    async def retry_all(given: ActionInput) -> str:
        retried = skipped = 0
        for job_id in _job_ids(given.form):
            try:
                await jobs_service.retry_job(given.uow, job_id)
            except DomainError:  # raised before it wrote anything: the others go on
                skipped += 1
            else:
                retried += 1
        return f"{retried} failed job(s) retried" + (f", {skipped} skipped." if skipped else ".")

    return await act(request, retry_all)
