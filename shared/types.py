"""Field types shared by the request schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
)

STRICT_INPUT = ConfigDict(extra="forbid", str_strip_whitespace=False)

_CODE_RE = re.compile(r"^[A-Z0-9](?:[A-Z0-9-]*[A-Z0-9])?$")


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _check_code(value: str) -> str:
    if not _CODE_RE.fullmatch(value):
        raise ValueError("only A-Z, 0-9 and '-', not starting or ending with '-'")
    return value


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _money(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value.as_tuple().exponent < -2 and value != value.quantize(Decimal("0.01")):  # type: ignore[operator]
        raise ValueError("at most 2 decimal places")
    return value.quantize(Decimal("0.01"))


# the codes' rule in the schema too (``_check_code`` gives the readable message), so that
# clients and schema-driven fuzzers can make valid ones
_CODE = _CODE_RE.pattern
Sku = Annotated[
    str,
    BeforeValidator(_strip),
    Field(
        min_length=3, max_length=32, examples=["WIDGET-42"], json_schema_extra={"pattern": _CODE}
    ),
    AfterValidator(_check_code),
]
LocationCode = Annotated[
    str,
    BeforeValidator(_strip),
    Field(min_length=1, max_length=16, examples=["MAIN"], json_schema_extra={"pattern": _CODE}),
    AfterValidator(_check_code),
]
Money = Annotated[
    Decimal,
    BeforeValidator(_reject_bool),
    Field(gt=0, lt=10_000_000_000, examples=["12.50"]),
    AfterValidator(_money),
    # what it takes, in standard JSON Schema (pydantic wrote non-standard "gt"/"lt" keys)
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 9_999_999_999.99},
                {"type": "string", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,2})?$"},
            ],
            "description": "A price > 0 with at most 2 decimal places, a number or a string.",
            "examples": ["12.50"],
        },
        mode="validation",
    ),
]
NonNegativeInt = Annotated[StrictInt, Field(ge=0, le=2_147_483_647)]
Title = Annotated[str, BeforeValidator(_strip), Field(min_length=1, max_length=200)]
ShortText = Annotated[str, Field(max_length=100)]
LongText = Annotated[str, Field(max_length=5000)]


def unstorable_text(value: str) -> str | None:
    """Why PostgreSQL cannot store ``value`` as text (a NUL, a lone surrogate), else ``None``."""
    if "\x00" in value:
        return "text must not contain NUL (U+0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text must not contain a lone surrogate"
    return None


def storable_instant(value: datetime) -> datetime:
    """``value`` (aware) in UTC; ``ValueError`` when it has no UTC equivalent that PostgreSQL
    and Python can both hold (year 0001 at offset +20:27 is year 0 in UTC)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None


_RFC3339_START = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")


def _rfc3339_text(value: Any) -> Any:
    """Text shaped as RFC 3339; pydantic alone would also take a number of Unix seconds."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339_START.match(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    return value


Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(storable_instant)
]
"""An RFC 3339 timestamp with an offset, returned in UTC: what every ``since``/``until`` takes."""
