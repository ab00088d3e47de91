"""Standard Webhooks: signing, and one delivery attempt with its log row.

A message keeps its id across attempts (receivers dedupe on ``webhook-id``); each attempt is
signed with its own timestamp: ``v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``.
A secret in the ``whsec_<base64>`` form is decoded; any other secret is used as UTF-8 bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.db.database import Database
from shared.jobs.batching import Batched
from shared.jobs.retry import PermanentJobError, TransientJobError

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
RETRYABLE_STATUSES = frozenset({408, 429})

log = logging.getLogger("stockroom.webhooks")


WHSEC_PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: a ``whsec_<base64>`` secret decoded (strictly: ``ValueError`` for one
    that is not base64, checked at start-up by the settings), any other as UTF-8 bytes."""
    if secret.startswith(WHSEC_PREFIX):
        key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
        if not key:
            raise ValueError("a whsec_ secret needs its base64 key after the prefix")
        return key
    return secret.encode()


def url_for_errors(url: str) -> str:
    """What of the webhook URL may appear in a job's error: its scheme and host. Its path,
    query and user info may carry a token, and job errors are readable with ``jobs:read``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def _without_url(text: str, url: str) -> str:
    return text.replace(url, url_for_errors(url)) if url else text


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def encode_body(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "data": data}, separators=(",", ":")).encode()


async def deliver(
    db: Database,
    client: httpx.AsyncClient,
    *,
    job_id: uuid.UUID,
    attempt: int,
    url: str,
    secret: str,
    event_type: str,
    data: dict[str, Any],
    delivery_log: DeliveryLog | None = None,
) -> dict[str, Any]:
    """POST the event once; records the attempt. Network errors, 5xx, 408 and 429 raise
    ``TransientJobError``; any other non-2xx raises ``PermanentJobError``. A connection is
    taken only to record the attempt, never across the HTTP call (a slow receiver would hold
    pooled connections for its whole timeout). The record is best effort: a delivery that
    the receiver accepted stands even when its log row cannot be written (raising would retry
    the job and send the webhook again). A worker passes its process's ``delivery_log``, which
    writes the rows of concurrent deliveries in one statement."""
    body = encode_body(event_type, data)
    timestamp = int(time.time())
    message_id = f"msg_{job_id.hex}"
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
        "user-agent": "Stockroom-Webhooks/1",
    }
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        response = await client.post(url, content=body, headers=headers, timeout=TIMEOUT)
        status = response.status_code
    except httpx.TransportError as exc:
        error = _without_url(f"{type(exc).__name__}: {exc}", url)[:1000]
    finally:
        duration_ms = int((time.monotonic() - started) * 1000)
        attempt_row = DeliveryAttempt(job_id, attempt, url, status, error, duration_ms)
        await (delivery_log or DeliveryLog(db)).record(attempt_row)
    if status is None:
        raise TransientJobError(f"delivery to {url_for_errors(url)} failed: {error}")
    if 200 <= status < 300:
        return {"status_code": status, "webhook_id": message_id}
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise TransientJobError(f"receiver answered {status}")
    raise PermanentJobError(f"receiver answered {status}; not retried")


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One ``webhook_deliveries`` row."""

    job_id: uuid.UUID
    attempt: int
    url: str
    status_code: int | None
    error: str | None
    duration_ms: int


_INSERT_ATTEMPTS = (
    "INSERT INTO webhook_deliveries (job_id, attempt, url, status_code, error, duration_ms)"
    " SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::smallint[], $5::text[],"
    " $6::int[])"
)


class DeliveryLog:
    """The ``webhook_deliveries`` rows of one process, written together: the attempts recorded
    while a statement is in flight go in the next one (``Batched``), one statement for many
    deliveries instead of one each. Best effort: a row that cannot be written is logged,
    never raised (the delivery stands), and never retried; a batch that fails is written
    again a row at a time, so that one bad row does not lose its neighbours."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batch: Batched[DeliveryAttempt, None] = Batched(self._write)

    async def record(self, attempt: DeliveryAttempt) -> None:
        await self._batch.submit(attempt)

    async def _write(self, attempts: list[DeliveryAttempt]) -> list[None]:
        try:
            await self._insert(attempts)
        except Exception:
            if len(attempts) > 1:
                for attempt in attempts:
                    await self._write([attempt])
            else:
                log.warning(
                    "could not record a webhook delivery attempt",
                    exc_info=True,
                    extra={
                        "job_id": str(attempts[0].job_id),
                        "attempt": attempts[0].attempt,
                        "status_code": attempts[0].status_code,
                    },
                )
        return [None] * len(attempts)

    async def _insert(self, attempts: list[DeliveryAttempt]) -> None:
        async with self._db.acquire() as conn:
            await conn.execute(
                _INSERT_ATTEMPTS,
                [a.job_id for a in attempts],
                [a.attempt for a in attempts],
                [a.url for a in attempts],
                [a.status_code for a in attempts],
                [a.error for a in attempts],
                [a.duration_ms for a in attempts],
            )
