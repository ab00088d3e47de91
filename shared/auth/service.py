"""API key records: create, list, revoke, authenticate."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.audit.events import record_event
from shared.auth.keys import (
    KeyToken,
    Scope,
    generate_key,
    hash_secret,
    parse_token,
    scopes_granting,
)
from shared.db.connection import Connection
from shared.db.database import Database
from shared.db.unit_of_work import UnitOfWork
from shared.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key's id, name and scopes."""

    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return not self.scopes.isdisjoint(scopes_granting(scope))


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: uuid.UUID
    name: str
    scopes: list[str]
    key: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def caller_sql(
    prefix: str, secret_hash: str, key: str | None = None, lock: str | None = None
) -> str:
    """The one query that finds the caller, for a CTE of every statement that authenticates:
    the live key of prefix ``prefix`` whose secret hashes to ``secret_hash`` (SHA-256s are
    compared, so the time taken tells nothing of the secret), its ``id``, ``name`` and
    ``scopes``, and ``locked``: whether the advisory lock ``lock`` of the Idempotency-Key
    ``key`` was taken (true without a key; taken only for a caller found). The arguments are
    the statement's placeholders (``$1``...)."""
    locked = (
        "true"
        if key is None
        else f"CASE WHEN {key}::text IS NULL THEN true"
        f" ELSE pg_try_advisory_xact_lock({lock}::bigint) END"
    )
    return f"""
    SELECT k.id, k.name, k.scopes, {locked} AS locked
    FROM api_keys k
    WHERE k.prefix = {prefix}::text AND k.revoked_at IS NULL
      AND k.secret_hash = {secret_hash}::bytea"""  # noqa: S608


_AUTH_SQL = f"WITH caller AS ({caller_sql('$1', '$2')}) SELECT id, name, scopes FROM caller"  # noqa: S608


def principal_of(row: asyncpg.Record) -> Principal:
    """The caller, from a row of ``caller_sql``'s columns."""
    return Principal(key_id=row["id"], name=row["name"], scopes=frozenset(row["scopes"]))


async def authenticate(conn: Connection, key: KeyToken) -> Principal | None:
    """The live key ``key`` presents, or ``None``."""
    row = await conn.fetchrow(_AUTH_SQL, key.prefix, hash_secret(key.secret))
    return None if row is None else principal_of(row)


async def create_key(conn: Connection, name: str, scopes: list[str]) -> CreatedKey:
    new_key = generate_key()
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (name, prefix, secret_hash, scopes) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        name,
        new_key.prefix,
        hash_secret(new_key.secret),
        scopes,
    )
    return CreatedKey(id=key_id, name=name, scopes=scopes, key=new_key.token)


async def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = await conn.fetch(
        "SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys"
        " ORDER BY created_at, id"
    )
    return [KeyInfo(**dict(r)) for r in rows]


async def revoke_key(conn: Connection, key_id: uuid.UUID) -> bool:
    """Revoke a key; ``False`` when no live key has that id. Takes effect on the next request."""
    result: str = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return result.endswith(" 1")


async def ensure_dev_admin_key(conn: Connection, saved: str | None) -> str:
    """The development admin key: ``saved`` while it still authenticates with admin scope,
    else a new one (the caller keeps it where the next start finds it)."""
    token = parse_token(saved) if saved else None
    if saved and token is not None:
        principal = await authenticate(conn, token)
        if principal is not None and principal.allows(Scope.admin):
            return saved
    created = await create_key(conn, "dev-admin", [Scope.admin.value])
    return created.key


async def create_key_audited(uow: UnitOfWork, name: str, scopes: list[str]) -> CreatedKey:
    """Create a key and record the audit event, in the caller's transaction."""
    created = await create_key(uow.conn, name, scopes)
    await record_event(
        uow, "key.created", f"key:{created.id}", [], {"name": name, "scopes": scopes}
    )
    return created


async def revoke_key_audited(uow: UnitOfWork, key_id: uuid.UUID) -> bool:
    revoked = await revoke_key(uow.conn, key_id)
    if revoked:
        await record_event(uow, "key.revoked", f"key:{key_id}", [], {"id": str(key_id)})
    return revoked


class LiveKeys:
    """The gate before a mutation's body is read: the key must exist (401 otherwise), so
    that only a caller holding a live key can make the process hold an upload. Keys found
    live are remembered for ``ttl`` seconds, by prefix and secret hash, so that the hot path
    pays no round trip for it; the statement that does the work authenticates again, so a
    key revoked meanwhile still writes nothing."""

    def __init__(self, ttl: float = 5.0, most: int = 10_000) -> None:
        self.ttl = ttl
        self.most = most
        self._live_until: dict[tuple[str, bytes], float] = {}

    async def check(self, db: Database, key: KeyToken) -> None:
        seen = (key.prefix, hash_secret(key.secret))
        now = time.monotonic()
        if self._live_until.get(seen, 0.0) > now:
            return
        async with db.acquire() as conn:
            principal = await authenticate(conn, key)
        if principal is None:
            raise Unauthenticated("the API key is unknown or revoked")
        if len(self._live_until) >= self.most:  # bounded: start over
            self._live_until.clear()
        self._live_until[seen] = now + self.ttl
