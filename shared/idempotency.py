"""Opening a mutation, and Idempotency-Key records: the caller is authenticated and its key
looked up under a transaction-scoped advisory lock (a concurrent request with the same key
gets 409) in one statement, and the response is stored in the same transaction as the work,
so a key never exists without its effect nor an effect without its key. Kept 24 h."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.auth.keys import KeyMaterial, Scope, hash_secret
from shared.auth.service import Principal
from shared.db.connection import Connection
from shared.errors import (
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    Unauthenticated,
)

MAX_KEY_LENGTH = 255
RETENTION = "24 hours"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests 'the same': method, path and the JSON body up to key order and
    white space (a body that is not JSON counts byte for byte)."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except Exception:  # not JSON, or nested too deep to canonicalise: byte for byte
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def lock_id(key_prefix: str, key: str) -> int:
    """The advisory lock of one API key's Idempotency-Key (the API key by its public prefix,
    known before any query)."""
    return int.from_bytes(
        hashlib.blake2b(f"{key_prefix}:{key}".encode(), digest_size=8).digest(), "big", signed=True
    )


# One round trip opens a mutation: the caller's key row, and under an Idempotency-Key its lock
# and stored response. The lock is taken only for a matching secret (the caller still checks
# it in constant time). The lookup's snapshot predates the lock, so a holder committing in
# between goes unseen: the work then runs, ``store`` meets the holder's row and raises
# ``KeyStoredMeanwhile``, and the caller rolls back and opens again, which replays it.
_OPEN_SQL = f"""
SELECT k.id, k.name, k.secret_hash, k.scopes,
       CASE WHEN $2::text IS NOT NULL AND k.secret_hash = $4::bytea
            THEN pg_try_advisory_xact_lock($3::bigint) END AS locked,
       s.fingerprint, s.status_code, s.headers, s.body
FROM api_keys k
LEFT JOIN idempotency_keys s
       ON s.api_key_id = k.id AND s.key = $2::text
      AND s.created_at > now() - interval '{RETENTION}'
WHERE k.prefix = $1 AND k.revoked_at IS NULL
"""


class KeyStoredMeanwhile(IdempotencyKeyInFlight):
    """``store`` met a record committed after the lookup (see ``_OPEN_SQL``): roll back and
    open the mutation again, which then replays that record (or answers 422)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """The caller of a mutation and, under an Idempotency-Key, the response to replay."""

    principal: Principal
    replay: StoredResponse | None


async def open_mutation(
    conn: Connection, material: KeyMaterial, scope: str, key: str | None, print_: bytes
) -> Opened:
    """Inside the mutation's transaction, in one statement: authenticate the caller (401),
    check ``scope`` (403), and claim ``key`` (400 for a bad key, 409 while another request
    holds it, 422 when it was used for a different request). ``replay`` is ``None`` when the
    work must run (the caller then calls ``store``)."""
    # a key that does not fit is answered 400, but only after 401 and 403
    valid_key = key if key is not None and 1 <= len(key) <= MAX_KEY_LENGTH else None
    secret_hash = hash_secret(material.secret)
    row = await conn.fetchrow(
        _OPEN_SQL,
        material.prefix,
        valid_key,
        lock_id(material.prefix, valid_key) if valid_key is not None else 0,
        secret_hash,
    )
    if row is None or not hmac.compare_digest(secret_hash, bytes(row["secret_hash"])):
        raise Unauthenticated("the API key is unknown or revoked")
    principal = Principal(key_id=row["id"], name=row["name"], scopes=frozenset(row["scopes"]))
    if not principal.allows(scope):
        raise Forbidden(f"this API key lacks the '{scope}' scope")
    if valid_key is None:
        if key is not None:
            raise InvalidIdempotencyKey(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters")
        return Opened(principal, None)
    if not row["locked"]:
        raise IdempotencyKeyInFlight("a request with this Idempotency-Key is still in flight")
    if row["fingerprint"] is None:
        return Opened(principal, None)
    if bytes(row["fingerprint"]) != print_:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request in the last 24 hours"
        )
    return Opened(
        principal, StoredResponse(row["status_code"], dict(row["headers"]), bytes(row["body"]))
    )


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
    if stored is None:  # the rare race ``open_mutation`` describes
        raise KeyStoredMeanwhile("a request with this Idempotency-Key completed concurrently")


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


# --- a whole mutation in one statement ----------------------------------------------------------

_CONTENT_TYPE_JSON = '{"content-type": "application/json"}'


@dataclass(frozen=True, slots=True)
class AtOnce:
    """A mutation whose happy path is a single statement: the caller's key, the
    Idempotency-Key's lock and record, the work and the storing of its answer, committed
    together by the statement's own implicit transaction (one round trip instead of BEGIN,
    open, work, store, COMMIT), or by a group's (``Database.fetchrow`` with ``order``).

    Built by ``at_once``; ``params`` gives the work's parameters from the validated body. The
    statement writes only when everything is in order: a known key with the scope, and an
    Idempotency-Key that is free (no record at all, not even an expired one, and not locked).
    Otherwise it writes nothing and the caller runs the mutation the general way, which gives
    every other answer (401, 403, 409, 422, a replay, or a domain error and its record)."""

    scope: str
    sql: str
    status_code: int
    params: Callable[[Any, str | None, int], Sequence[Any]]
    order: Callable[[Any], Any]
    job_kind: str | None


def at_once(
    scope: str,
    work: str,
    work_params: int,
    answer: str,
    status_code: int,
    params: Callable[[Any, str | None, int], Sequence[Any]],
    order: Callable[[Any], Any],
    job_kind: str | None = None,
) -> AtOnce:
    """Compose the statement, for a caller with ``scope``.

    ``work``: data-modifying CTEs (``name AS (...), ...``) whose parameters are ``$1`` to
    ``$<work_params>`` and which read the caller from a CTE ``actor`` (``key_id``,
    ``key_name``): no row there means nothing may be written. ``answer``: a CTE ``answer``
    of one row when the work is done, with ``body`` (the response's JSON text) and ``job_id``
    (the outbox job of kind ``job_kind`` the work wrote, or NULL). ``params(body, request_id,
    job_max_tries)``: the work's parameters. ``order(body)``: the sort key of the rows the work
    locks, in the order every other path locks them (statements run in groups, in that order,
    and one that writes nothing still returns one row, of NULLs)."""
    n = work_params
    prefix, secret_hash, key, lock, print_ = (f"${n + i}" for i in range(1, 6))
    grants = "ARRAY[" + ", ".join(f"'{s}'" for s in granting(scope)) + "]"
    sql = f"""
WITH caller AS (
    SELECT k.id, k.name, k.scopes,
           CASE WHEN {key}::text IS NULL THEN true
                ELSE pg_try_advisory_xact_lock({lock}::bigint) END AS locked
    FROM api_keys k
    WHERE k.prefix = {prefix}::text AND k.revoked_at IS NULL
      AND k.secret_hash = {secret_hash}::bytea
), actor AS (
    SELECT c.id AS key_id, c.name AS key_name FROM caller c
    WHERE c.locked AND c.scopes && {grants}
      AND NOT EXISTS (
          SELECT FROM idempotency_keys s WHERE s.api_key_id = c.id AND s.key = {key}::text)
), {work}, {answer}, stored AS (
    INSERT INTO idempotency_keys (api_key_id, key, fingerprint, status_code, headers, body)
    SELECT actor.key_id, {key}::text, {print_}::bytea, {status_code},
           '{_CONTENT_TYPE_JSON}'::jsonb, convert_to(answer.body, 'UTF8')
    FROM actor, answer WHERE {key}::text IS NOT NULL
)
SELECT done.* FROM (SELECT) AS one LEFT JOIN (
    SELECT actor.key_id, actor.key_name, caller.scopes, answer.body, answer.job_id
    FROM actor, caller, answer
) AS done ON true
"""
    return AtOnce(scope, sql, status_code, params, order, job_kind)


@dataclass(frozen=True, slots=True)
class Done:
    """A mutation run at once: its caller, answer (stored under the key) and outbox job."""

    principal: Principal
    body: bytes
    job_id: uuid.UUID | None


def granting(scope: str) -> list[str]:
    """The scopes any one of which allows ``scope`` (``Principal.allows``)."""
    return [scope, Scope.admin.value]


FetchRow = Callable[..., Awaitable["asyncpg.Record | None"]]


async def run_at_once(
    fetchrow: FetchRow,
    mutation: AtOnce,
    work_params: Sequence[Any],
    material: KeyMaterial,
    key: str | None,
    print_: bytes,
) -> Done | None:
    """Run ``mutation``'s statement with ``fetchrow`` (``Database.fetchrow`` with the
    mutation's ``order``, or a connection's outside a transaction: the statement is one).
    ``None``: nothing was written; run the mutation the general way."""
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        return None
    try:
        row = await fetchrow(
            mutation.sql,
            *work_params,
            material.prefix,
            hash_secret(material.secret),
            key,
            lock_id(material.prefix, key) if key is not None else 0,
            print_ if key is not None else None,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.table_name != "idempotency_keys":
            raise
        # the key's record committed after this statement's snapshot and before its lock
        # (see ``_OPEN_SQL``): the statement is undone; the general way replays that record
        return None
    if row is None or row[0] is None:  # it wrote nothing (a row of NULLs)
        return None
    principal = Principal(key_id=row[0], name=row[1], scopes=frozenset(row[2]))
    return Done(principal, row[3].encode(), row[4])
