"""Errors as RFC 9457 problem+json, in one place: domain errors, FastAPI's own 404/405/422,
text PostgreSQL cannot store (422, ``api.text_guard``), data PostgreSQL refused (422, the last
line of defence), and anything unhandled (500, no internals)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db.database import CONNECTION_FAILURES, is_connection_failure, unavailable
from shared.errors import DatabaseUnavailable, DomainError, UnprocessableReference

log = logging.getLogger("stockroom.api")

PROBLEM_TYPE_BASE = "https://stockroom.dev/problems/"
MEDIA_TYPE = "application/problem+json"


_HTTP_SLUGS = {413: "payload-too-large", 404: "not-found", 405: "method-not-allowed"}


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def domain_problem(exc: DomainError) -> ProblemResponse:
    extra = dict(exc.extra)
    if isinstance(exc, UnprocessableReference):
        extra["errors"] = [{"loc": exc.loc, "msg": exc.detail, "type": exc.type_slug}]
    headers = getattr(exc, "headers", None)  # Retry-After of a 429, say
    if isinstance(exc, DatabaseUnavailable):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    return problem(
        exc.status, exc.detail, slug=exc.type_slug, title=exc.title, headers=headers, **extra
    )


def validation_problem(errors: list[dict[str, Any]]) -> ProblemResponse:
    return problem(
        422,
        "the request is not valid",
        slug="validation-error",
        title="Validation error",
        errors=errors,
    )


class UnstorableText(StarletteHTTPException):
    """Text in a request that PostgreSQL cannot store (a NUL, a lone surrogate): 422. An
    HTTPException so that FastAPI's body reading passes it on as it is when ``receive``
    raises it (``api.text_guard``)."""

    def __init__(self, loc: list[str], msg: str) -> None:
        super().__init__(422, msg)
        self.loc = loc
        self.msg = msg

    def response(self) -> ProblemResponse:
        return validation_problem([{"loc": self.loc, "msg": self.msg, "type": "unstorable_text"}])


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid"))
        errors.append({"loc": list(err.get("loc", ())), "msg": msg, "type": err.get("type")})
    return errors


async def _on_domain_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, DomainError)
    return domain_problem(exc)


async def _on_validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(_validation_errors(exc))


async def _on_unstorable_text(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, UnstorableText)
    return exc.response()


# asyncpg's data errors: PostgreSQL's SQLSTATE class 22 (a value out of range, a NUL in text,
# a bad date...), which asyncpg also raises (as 22000) for an argument it cannot encode, and
# its interface-level DataError.
DATA_ERRORS = (asyncpg.DataError, asyncpg.exceptions._base.DataError)


async def _on_data_error(request: Request, exc: Exception) -> ProblemResponse:
    """The last line of defence: input that passed validation but that PostgreSQL (or the
    driver) refused as data is the client's error, 422, never a 500. Logged, since it means
    a check is missing at the edge."""
    sqlstate = exc.sqlstate if isinstance(exc, asyncpg.PostgresError) else "client-side"
    log.warning(
        "data error on %s %s (SQLSTATE %s): %s; add a check at the edge",
        request.method,
        request.url.path,
        sqlstate,
        type(exc).__name__,
    )
    return problem(
        422,
        "a value in the request is out of range or cannot be stored",
        slug="invalid-data",
        title="Invalid data",
        errors=[{"loc": ["request"], "msg": "value cannot be stored", "type": "invalid_data"}],
    )


async def _on_http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    slug = _HTTP_SLUGS.get(exc.status_code)
    return problem(exc.status_code, detail, slug=slug, headers=dict(exc.headers or {}))


async def _on_connection_failure(request: Request, exc: Exception) -> ProblemResponse:
    """A statement's connection broke, or the database did not answer in time: a 503 and one
    log line (``unavailable``), not a 500 and a traceback."""
    if is_connection_failure(exc):
        return domain_problem(unavailable(exc))
    return await _on_unhandled(request, exc)  # an OSError of another kind, a DataError...


async def _on_unhandled(request: Request, exc: Exception) -> ProblemResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "an internal error occurred; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for failure in CONNECTION_FAILURES:
        app.add_exception_handler(failure, _on_connection_failure)
    app.add_exception_handler(UnstorableText, _on_unstorable_text)
    for data_error in DATA_ERRORS:
        app.add_exception_handler(data_error, _on_data_error)
    app.add_exception_handler(Exception, _on_unhandled)
