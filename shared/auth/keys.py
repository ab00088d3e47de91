"""API keys. A key reads ``sr_<prefix>_<secret>``: the prefix (public, 12 hex chars) finds the
row; the secret (256 bits, base64url) is checked against its SHA-256 in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

KEY_SCHEME = "sr"


class Scope(StrEnum):
    catalog_read = "catalog:read"
    catalog_write = "catalog:write"
    inventory_read = "inventory:read"
    inventory_write = "inventory:write"
    reports_read = "reports:read"
    reports_write = "reports:write"
    jobs_read = "jobs:read"
    jobs_write = "jobs:write"
    audit_read = "audit:read"
    admin = "admin"


ALL_SCOPES = frozenset(s.value for s in Scope)


@dataclass(frozen=True, slots=True)
class KeyToken:
    """A key's two parts, as presented by a caller (``parse_token``) or just made."""

    prefix: str
    secret: str

    @property
    def token(self) -> str:
        return f"{KEY_SCHEME}_{self.prefix}_{self.secret}"


def generate_key() -> KeyToken:
    return KeyToken(prefix=secrets.token_hex(6), secret=secrets.token_urlsafe(32))


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> KeyToken | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != 12 or not parts[2]:
        return None
    if len(token) > 128:
        return None
    return KeyToken(prefix=parts[1], secret=parts[2])


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def scopes_granting(scope: str) -> tuple[str, ...]:
    """The scopes any one of which allows ``scope`` (``admin`` holds every scope): the one
    rule, used by ``Principal.allows`` and by the statements that check a caller in SQL."""
    return (scope, Scope.admin.value)


def parse_scopes(raw: str) -> list[str]:
    scopes = sorted({s.strip() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; known: {sorted(ALL_SCOPES)}")
    if not scopes:
        raise ValueError("at least one scope is required")
    return scopes
