"""The Stockroom client: ``Client`` / ``AsyncClient`` on httpx, typed answers, typed errors,
safe retries (every POST carries an ``Idempotency-Key``), jobs waited for, reports downloaded.
Needs only httpx and pydantic (and rich for the ``stockroom-client`` command)."""

from stockroom_client.client import AsyncClient, Client, Options
from stockroom_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    InsufficientStock,
    JobFailed,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    StockroomError,
    Unauthenticated,
    UnsupportedMediaType,
    ValidationFailed,
)
from stockroom_client.models import ImportResult, Job
from stockroom_client.retry import RetryEvent, RetryPolicy

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Gone",
    "ImportResult",
    "InsufficientStock",
    "Job",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "Options",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RateLimited",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "StockroomError",
    "Unauthenticated",
    "UnsupportedMediaType",
    "ValidationFailed",
]
