"""Errors as values with a type: every problem+json answer becomes an ``ApiError`` subclass
chosen by its status and ``type``, carrying the problem's fields."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx


class StockroomError(Exception):
    """Anything this client raises on purpose."""


class ApiError(StockroomError):
    """The API answered with an error (RFC 9457 problem+json)."""

    status_code: ClassVar[int] = 0

    def __init__(self, status: int, problem: dict[str, Any], headers: httpx.Headers) -> None:
        self.status = status
        self.problem = problem
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", "HTTP error"))
        self.detail: str = str(problem.get("detail", ""))
        self.headers = headers
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else self.title)

    @property
    def slug(self) -> str:
        return self.type.rsplit("/", 1)[-1]


class BadRequest(ApiError):
    status_code = 400


class Unauthenticated(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class InsufficientStock(Conflict):
    """An adjustment or transfer would take a level below zero."""

    @property
    def available(self) -> int | None:
        value = self.problem.get("available")
        return value if isinstance(value, int) else None


class Gone(ApiError):
    status_code = 410


class PreconditionFailed(ApiError):
    status_code = 412


class PayloadTooLarge(ApiError):
    status_code = 413


class UnsupportedMediaType(ApiError):
    status_code = 415


class ValidationFailed(ApiError):
    """422: ``errors`` lists ``{loc, msg, type}`` for each problem found."""

    status_code = 422

    @property
    def errors(self) -> list[dict[str, Any]]:
        found = self.problem.get("errors")
        return list(found) if isinstance(found, list) else []


class RateLimited(ApiError):
    """429; ``retry_after`` is the delay the server asked for, in seconds."""

    status_code = 429

    @property
    def retry_after(self) -> float | None:
        from stockroom_client.retry import server_delay

        return server_delay(self.headers)


class ServerError(ApiError):
    """A 5xx the client's retries did not get past."""

    status_code = 500


class ServiceUnavailable(ServerError):
    status_code = 503


class ConnectionFailed(StockroomError):
    """No answer: the connection failed or timed out on every attempt."""


class JobFailed(StockroomError):
    """The job ended ``failed`` (or ``cancelled``); ``job`` is its final record."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.error: str | None = job.error
        super().__init__(f"job {job.id} {job.status}: {job.error or 'no error recorded'}")


class JobTimeout(StockroomError, TimeoutError):
    """``wait_for_job`` gave up before the job finished; ``job`` is the last record seen."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PreconditionFailed,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        RateLimited,
        ServiceUnavailable,
    )
}
_BY_SLUG: dict[str, type[ApiError]] = {"insufficient-stock": InsufficientStock}


def error_for(response: httpx.Response) -> ApiError:
    """The typed error of an error answer (problem+json, or anything else a proxy sent)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: dict[str, Any] = (
        body
        if isinstance(body, dict)
        else {"title": response.reason_phrase or "HTTP error", "detail": response.text[:500]}
    )
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    status = response.status_code
    cls = _BY_SLUG.get(slug) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(status, problem, response.headers)
