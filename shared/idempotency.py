"""Opening a mutation, and Idempotency-Key records: the caller is authenticated and its key
looked up under a transaction-scoped advisory lock (a concurrent request with the same key
gets 409) in one statement, and the response is stored in the same transaction as the work,
so a key never exists without its effect nor an effect without its key. Kept 24 h."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel

from shared.auth.keys import KeyToken, hash_secret, scopes_granting
from shared.auth.service import Principal, caller_sql, principal_of
from shared.db.connection import Connection
from shared.db.group_commit import GroupCommitter
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


class NotJson:
    """What ``RequestBody.json`` gives for a body that is not JSON (or nested too deep)."""


NOT_JSON = NotJson()
_UNREAD = object()


class RequestBody:
    """A request's body, decoded as JSON at most once: the fingerprint and the body's
    validation share the decoding."""

    __slots__ = ("_value", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._value: Any = _UNREAD

    def json(self) -> Any:
        """The body's JSON value, or ``NOT_JSON``."""
        if self._value is _UNREAD:
            try:
                self._value = json.loads(self.raw)
            except (ValueError, RecursionError):
                self._value = NOT_JSON
        return self._value


def _canonical_json(value: Any, raw: bytes) -> bytes:
    """``value`` in one spelling (keys sorted, no white space); ``raw`` as it is when it is
    not JSON or nested too deep to spell."""
    if value is NOT_JSON:
        return raw
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return raw


def fingerprint(method: str, path: str, body: bytes | RequestBody) -> bytes:
    """What makes two requests 'the same': method, path and the JSON body up to key order and
    white space (a body that is not JSON counts byte for byte)."""
    if isinstance(body, bytes):
        body = RequestBody(body)
    canonical = _canonical_json(body.json(), body.raw)
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


# One round trip opens a mutation: the caller (``caller_sql``), and under an Idempotency-Key
# its lock and stored response. The lookup's snapshot predates the lock, so a holder
# committing in between goes unseen: the work then runs, ``store`` meets the holder's row and
# raises ``KeyStoredMeanwhile``, and the caller rolls back and opens again, which replays it.
_OPEN_SQL = f"""
WITH caller AS ({caller_sql("$1", "$4", "$2", "$3")})
SELECT c.id, c.name, c.scopes, c.locked, s.fingerprint, s.status_code, s.headers, s.body
FROM caller c
LEFT JOIN idempotency_keys s
       ON s.api_key_id = c.id AND s.key = $2::text
      AND s.created_at > now() - interval '{RETENTION}'
"""  # noqa: S608


class KeyStoredMeanwhile(IdempotencyKeyInFlight):
    """``store`` met a record committed after the lookup (see ``_OPEN_SQL``): roll back and
    open the mutation again, which then replays that record (or answers 422)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """The caller of a mutation and, under an Idempotency-Key, the response to replay."""

    principal: Principal
    replay: StoredResponse | None


async def open_mutation(
    conn: Connection, key_token: KeyToken, scope: str, key: str | None, request_digest: bytes
) -> Opened:
    """Inside the mutation's transaction, in one statement: authenticate the caller (401),
    check ``scope`` (403), and claim ``key`` (400 for a bad key, 409 while another request
    holds it, 422 when it was used for a different request). ``replay`` is ``None`` when the
    work must run (the caller then calls ``store``)."""
    # a key that does not fit is answered 400, but only after 401 and 403
    valid_key = key if key is not None and 1 <= len(key) <= MAX_KEY_LENGTH else None
    row = await conn.fetchrow(
        _OPEN_SQL,
        key_token.prefix,
        valid_key,
        lock_id(key_token.prefix, valid_key) if valid_key is not None else 0,
        hash_secret(key_token.secret),
    )
    if row is None:
        raise Unauthenticated("the API key is unknown or revoked")
    principal = principal_of(row)
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
    if bytes(row["fingerprint"]) != request_digest:
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
    request_digest: bytes,
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
        """,  # noqa: S608
        api_key_id,
        key,
        request_digest,
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
        """,  # noqa: S608
        batch,
    )
    return int(result.split()[-1])


# --- a whole mutation in one statement ----------------------------------------------------------

_CONTENT_TYPE_JSON = '{"content-type": "application/json"}'


@dataclass(frozen=True, slots=True)
class OneStatementMutation:
    """A mutation whose happy path is a single statement: the caller's key, the
    Idempotency-Key's lock and record, the work and the storing of its answer, committed
    together by one transaction (why: docs/decisions/002-one-statement-restock.md), in a group
    with other requests' (``shared.db.group_commit``).

    Built by ``one_statement_mutation``. The statement writes only when everything is in order:
    a known key with the scope, and an Idempotency-Key that is free (no record at all, not even
    an expired one, and not locked). Otherwise it writes nothing and the caller runs the
    mutation the general way, which gives every other answer (401, 403, 409, 422, a replay, or
    a domain error and its record)."""

    scope: str
    sql: str
    status_code: int
    body: type[BaseModel]  # the request's JSON body
    params: Callable[[Any, str | None, int], Sequence[Any]]
    order: Callable[[Any], Any]
    job_kind: str | None


def one_statement_mutation(
    scope: str,
    body: type[BaseModel],
    work: str,
    work_params: int,
    answer: str,
    status_code: int,
    params: Callable[[Any, str | None, int], Sequence[Any]],
    order: Callable[[Any], Any],
    job_kind: str | None = None,
) -> OneStatementMutation:
    """Compose the statement, for a caller with ``scope`` sending ``body``.

    ``work``: data-modifying CTEs (``name AS (...), ...``) whose parameters are ``$1`` to
    ``$<work_params>`` and which read the caller from a CTE ``actor`` (``key_id``,
    ``key_name``): no row there means nothing may be written. ``answer``: a CTE ``answer``
    of one row when the work is done, with ``body`` (the response's JSON text, the one
    rendering of the answer) and ``job_id`` (the outbox job of kind ``job_kind`` the work
    wrote, or NULL). ``params(body, request_id, job_max_tries)``: the work's parameters.
    ``order(body)``: the sort key of the rows the work locks, in the order every other path
    locks them (a ``GroupCommitter``'s contract: one row always, of NULLs when it wrote
    nothing)."""
    n = work_params
    prefix, secret_hash, key, lock, digest = (f"${n + i}" for i in range(1, 6))
    grants = "ARRAY[" + ", ".join(f"'{s}'" for s in scopes_granting(scope)) + "]"
    sql = f"""
WITH caller AS ({caller_sql(prefix, secret_hash, key, lock)}
), actor AS (
    SELECT c.id AS key_id, c.name AS key_name FROM caller c
    WHERE c.locked AND c.scopes && {grants}
      AND NOT EXISTS (
          SELECT FROM idempotency_keys s WHERE s.api_key_id = c.id AND s.key = {key}::text)
), {work}, {answer}, stored AS (
    INSERT INTO idempotency_keys (api_key_id, key, fingerprint, status_code, headers, body)
    SELECT actor.key_id, {key}::text, {digest}::bytea, {status_code},
           '{_CONTENT_TYPE_JSON}'::jsonb, convert_to(answer.body, 'UTF8')
    FROM actor, answer WHERE {key}::text IS NOT NULL
)
SELECT done.* FROM (SELECT) AS one LEFT JOIN (
    SELECT actor.key_id, actor.key_name, caller.scopes, answer.body, answer.job_id
    FROM actor, caller, answer
) AS done ON true
"""  # noqa: S608
    return OneStatementMutation(scope, sql, status_code, body, params, order, job_kind)


@dataclass(frozen=True, slots=True)
class Committed:
    """A mutation committed in one statement: its caller, answer (stored under the key) and
    outbox job."""

    principal: Principal
    body: bytes
    job_id: uuid.UUID | None


async def run_one_statement(
    committer: GroupCommitter[Any],
    mutation: OneStatementMutation,
    body: Any,
    request_id: str | None,
    job_max_tries: int,
    key_token: KeyToken,
    key: str | None,
    request_digest: bytes,
) -> Committed | None:
    """Run ``mutation``'s statement for the validated ``body`` through ``committer`` (built
    for ``mutation.sql``). ``None``: nothing was written; run the mutation the general way."""
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        return None
    args = (
        *mutation.params(body, request_id, job_max_tries),
        key_token.prefix,
        hash_secret(key_token.secret),
        key,
        lock_id(key_token.prefix, key) if key is not None else 0,
        request_digest if key is not None else None,
    )
    try:
        row = await committer.commit(args, mutation.order(body))
    except asyncpg.UniqueViolationError as exc:
        if exc.table_name != "idempotency_keys":
            raise
        # the key's record committed after this statement's snapshot and before its lock
        # (see ``_OPEN_SQL``): the statement is undone; the general way replays that record
        return None
    if row[0] is None:  # it wrote nothing (a row of NULLs)
        return None
    principal = Principal(key_id=row[0], name=row[1], scopes=frozenset(row[2]))
    return Committed(principal, row[3].encode(), row[4])
