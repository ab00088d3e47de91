"""Keyset pagination: ``{items, next_cursor}`` with an opaque cursor over the sort key."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared.errors import DomainError

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


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
    """The sort key a cursor carries; ``InvalidCursor`` for anything not made by
    ``encode_cursor`` for this list."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidCursor("cursor is not one this API issued") from None
    if (
        not isinstance(data, list)
        or len(data) != len(types) + 1
        or data[0] != kind
        or not all(
            isinstance(v, t) and not isinstance(v, bool)
            for v, t in zip(data[1:], types, strict=True)
        )
    ):
        raise InvalidCursor("cursor is not one this API issued")
    return data[1:]
