"""Ops console sessions. Signing in with an ``admin`` API key creates a row; the browser gets
a random token (256 bits) that only this module turns into the row, by its SHA-256. Every
lookup joins the key: a session of a revoked key (or of one without ``admin``) is no session.

The CSRF token of a session is derived from its token (HMAC), so it is bound to the session,
changes with it, and needs no storage; a page renders it into its forms."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.db.connection import Connection

_CSRF_CONTEXT = b"stockroom-console-csrf"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in console: its row, the key it acts as, and its CSRF token."""

    id: uuid.UUID
    principal: Principal
    csrf_token: str


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token_for(token: str) -> str:
    """The synchroniser token of the session whose cookie holds ``token``."""
    return hmac.new(token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def tokens_match(expected: str, submitted: str) -> bool:
    """Constant-time comparison of two tokens."""
    return hmac.compare_digest(expected.encode(), submitted.encode())


def csrf_matches(session: ConsoleSession, submitted: str | None) -> bool:
    return submitted is not None and tokens_match(session.csrf_token, submitted)


async def start_session(conn: Connection, key_id: uuid.UUID, hours: int) -> str:
    """A new session for ``key_id``, valid ``hours``; returns its token (for the cookie only).
    Expired sessions are deleted on the way (the table stays as small as its live rows)."""
    token = secrets.token_urlsafe(32)
    await conn.execute("DELETE FROM console_sessions WHERE expires_at < now()")
    await conn.execute(
        "INSERT INTO console_sessions (token_hash, key_id, expires_at)"
        " VALUES ($1, $2, now() + make_interval(hours => $3))",
        _token_hash(token),
        key_id,
        hours,
    )
    return token


_FIND = f"""
SELECT s.id, k.id AS key_id, k.name, k.scopes
FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
WHERE s.token_hash = $1 AND s.expires_at > now()
  AND k.revoked_at IS NULL AND '{Scope.admin.value}' = ANY(k.scopes)
"""  # noqa: S608


async def find_session(conn: Connection, token: str) -> ConsoleSession | None:
    """The live session of ``token``: unexpired, its key unrevoked and still ``admin``."""
    if not token or len(token) > 128:
        return None
    row = await conn.fetchrow(_FIND, _token_hash(token))
    if row is None:
        return None
    principal = Principal(key_id=row["key_id"], name=row["name"], scopes=frozenset(row["scopes"]))
    return ConsoleSession(id=row["id"], principal=principal, csrf_token=csrf_token_for(token))


async def end_session(conn: Connection, session_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM console_sessions WHERE id = $1", session_id)
