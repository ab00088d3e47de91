"""Keyset pagination: ``{items, next_cursor}`` with an opaque cursor over the sort key."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared.errors import DomainError
from shared.types import storable_instant, unstorable_text

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# What a cursor's values may be: a bigint, and text no longer than any key the lists sort on.
_INT64 = range(-(2**63), 2**63)
_MAX_TEXT = 255


class InvalidCursor(DomainError):
    status = 422
    type_slug = "invalid-cursor"
    title = "Malformed cursor"


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(kind: str, key: list[Any]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The sort key a cursor carries, each value as ``types`` says (``int``, ``str``, and
    ``datetime`` or ``uuid.UUID`` from their text); ``InvalidCursor`` for anything not made by
    ``encode_cursor`` for this list, or that PostgreSQL could not take (a number past a
    bigint, text with a NUL or a lone surrogate, a timestamp out of range)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise InvalidCursor("cursor is not one this API issued") from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != kind:
        raise InvalidCursor("cursor is not one this API issued")
    try:
        return [_cursor_value(v, t) for v, t in zip(data[1:], types, strict=True)]
    except (TypeError, ValueError):
        raise InvalidCursor("cursor is not one this API issued") from None


def _cursor_value(value: Any, wanted: type) -> Any:
    if wanted is int:
        if isinstance(value, int) and not isinstance(value, bool) and value in _INT64:
            return value
        raise ValueError(value)
    if not isinstance(value, str) or len(value) > _MAX_TEXT or unstorable_text(value):
        raise ValueError(value)
    if wanted is datetime:
        instant = datetime.fromisoformat(value)
        if instant.tzinfo is None:
            raise ValueError(value)
        return storable_instant(instant)
    if wanted is uuid.UUID:
        return uuid.UUID(value)
    if wanted is str:
        return value
    raise TypeError(f"a cursor cannot carry {wanted}")
