"""Domain errors: values with a type, raised by services and mapped to problem+json in
``api.errors`` (one place)."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    status: ClassVar[int] = 400
    type_slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class DuplicateSku(Conflict):
    type_slug = "duplicate-sku"
    title = "SKU already exists"


class DuplicateLocation(Conflict):
    type_slug = "duplicate-location"
    title = "Location code already exists"


class ProductArchived(Conflict):
    type_slug = "product-archived"
    title = "Product is archived"


class InsufficientStock(Conflict):
    type_slug = "insufficient-stock"
    title = "Insufficient stock"


class JobStateConflict(Conflict):
    type_slug = "job-state-conflict"
    title = "Job is not in a state that allows this"


class PreconditionFailed(DomainError):
    status = 412
    type_slug = "precondition-failed"
    title = "Precondition failed"


class UnprocessableReference(DomainError):
    """A well-formed request naming something that does not exist (unknown SKU or location)."""

    status = 422
    type_slug = "unknown-reference"
    title = "Unknown reference"

    def __init__(self, detail: str, loc: list[str | int], **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.loc = loc


class IdempotencyKeyReused(DomainError):
    status = 422
    type_slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class IdempotencyKeyInFlight(Conflict):
    type_slug = "idempotency-key-in-flight"
    title = "A request with this Idempotency-Key is still being processed"


class InvalidIdempotencyKey(DomainError):
    status = 400
    type_slug = "invalid-idempotency-key"
    title = "Invalid Idempotency-Key"


class Unauthenticated(DomainError):
    status = 401
    type_slug = "unauthenticated"
    title = "Unauthenticated"


class Forbidden(DomainError):
    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


class PayloadTooLarge(DomainError):
    status = 413
    type_slug = "payload-too-large"
    title = "Payload too large"


class DatabaseUnavailable(DomainError, ConnectionError):
    """PostgreSQL did not answer: unreachable, restarting, the connection lost mid-request,
    or no pooled connection free in time. Nothing the request asked for is known to have been
    committed, nor known not to have been: a retry with the same Idempotency-Key finds out.
    A ``ConnectionError`` too, so that a job meeting it is retried (``shared.jobs.retry``)."""

    status = 503
    type_slug = "database-unavailable"
    title = "Database unavailable"
    retry_after_seconds: ClassVar[int] = 1


class RequestTimeout(DomainError):
    """The request's body did not arrive in time (a client trickling its upload)."""

    status = 408
    type_slug = "request-timeout"
    title = "Request timeout"
