"""Idempotency-Key records: looked up under a transaction-scoped advisory lock (a concurrent
request with the same key gets 409) and stored in the same transaction as the work, so a key
never exists without its effect nor an effect without its key. Kept 24 h."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from shared.db.connection import Connection
from shared.errors import IdempotencyKeyInFlight, IdempotencyKeyReused, InvalidIdempotencyKey

MAX_KEY_LENGTH = 255
RETENTION = "24 hours"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes


def validate_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters")
    return raw


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests 'the same': method, path and the JSON body up to key order and
    white space (a body that is not JSON counts byte for byte)."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def lock_id(api_key_id: uuid.UUID, key: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{api_key_id}:{key}".encode(), digest_size=8).digest(), "big", signed=True
    )


async def claim(
    conn: Connection, api_key_id: uuid.UUID, key: str, print_: bytes
) -> StoredResponse | None:
    """Inside the request's transaction: the stored response to replay, or ``None`` when the
    work must run (the caller then calls ``store``). Raises 409 while another request holds
    the key and 422 when the key was used for a different request."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock_id(api_key_id, key)):
        raise IdempotencyKeyInFlight("a request with this Idempotency-Key is still in flight")
    # A statement of its own, after the lock: its snapshot sees a holder's commit.
    row = await conn.fetchrow(
        "SELECT fingerprint, status_code, headers, body FROM idempotency_keys"
        f" WHERE api_key_id = $1 AND key = $2 AND created_at > now() - interval '{RETENTION}'",
        api_key_id,
        key,
    )
    if row is None:
        return None
    if bytes(row["fingerprint"]) != print_:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request in the last 24 hours"
        )
    return StoredResponse(row["status_code"], dict(row["headers"]), bytes(row["body"]))


async def store(
    conn: Connection,
    api_key_id: uuid.UUID,
    key: str,
    print_: bytes,
    response: StoredResponse,
) -> None:
    """Record the response; an expired record under the same key is replaced."""
    stored = await conn.fetchval(
        f"""
        INSERT INTO idempotency_keys AS k
            (api_key_id, key, fingerprint, status_code, headers, body)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (api_key_id, key) DO UPDATE SET
            fingerprint = excluded.fingerprint, status_code = excluded.status_code,
            headers = excluded.headers, body = excluded.body, created_at = now()
        WHERE k.created_at <= now() - interval '{RETENTION}'
        RETURNING 1
        """,
        api_key_id,
        key,
        print_,
        response.status_code,
        response.headers,
        response.body,
    )
    if stored is None:  # pragma: no cover - excluded by the advisory lock in ``claim``
        raise IdempotencyKeyInFlight("a request with this Idempotency-Key completed concurrently")


async def purge_expired(conn: Connection, batch: int = 5000) -> int:
    """Delete expired records, a batch at a time; returns how many went."""
    result: str = await conn.execute(
        f"""
        DELETE FROM idempotency_keys WHERE ctid IN (
            SELECT ctid FROM idempotency_keys
            WHERE created_at <= now() - interval '{RETENTION}' LIMIT $1)
        """,
        batch,
    )
    return int(result.split()[-1])
