"""API key records: create, list, revoke, authenticate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.audit.events import record_event
from shared.auth.keys import (
    Scope,
    generate_key,
    hash_secret,
    parse_token,
    secret_matches,
)
from shared.db.connection import Connection
from shared.db.unit_of_work import UnitOfWork


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key's id, name and scopes."""

    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return Scope.admin.value in self.scopes or scope in self.scopes


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


_AUTH_SQL = (
    "SELECT id, name, secret_hash, scopes FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL"
)


async def authenticate(conn: Connection, token: str) -> Principal | None:
    material = parse_token(token)
    if material is None:
        return None
    row = await conn.fetchrow(_AUTH_SQL, material.prefix)
    if row is None or not secret_matches(material.secret, bytes(row["secret_hash"])):
        return None
    return Principal(key_id=row["id"], name=row["name"], scopes=frozenset(row["scopes"]))


async def create_key(conn: Connection, name: str, scopes: list[str]) -> CreatedKey:
    material = generate_key()
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (name, prefix, secret_hash, scopes) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        name,
        material.prefix,
        hash_secret(material.secret),
        scopes,
    )
    return CreatedKey(id=key_id, name=name, scopes=scopes, key=material.token)


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
    if saved:
        principal = await authenticate(conn, saved)
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
