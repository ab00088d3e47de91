"""Catalog request and response bodies."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, field_serializer, model_validator

from shared.errors import DomainError
from shared.types import STRICT_INPUT, LongText, Money, NonNegativeInt, ShortText, Sku, Title


class ProductCreate(BaseModel):
    model_config = STRICT_INPUT

    sku: Sku
    title: Title
    unit_price: Money
    category: ShortText | None = None
    reorder_point: NonNegativeInt = 0
    description: LongText | None = None


class ProductPatch(BaseModel):
    """Fields to change; absent fields stay as they are, ``null`` clears an optional field."""

    model_config = STRICT_INPUT

    title: Title | None = None
    unit_price: Money | None = None
    category: ShortText | None = None
    reorder_point: NonNegativeInt | None = None
    description: LongText | None = None

    @model_validator(mode="after")
    def _check_fields(self) -> ProductPatch:
        if not self.model_fields_set:
            raise ValueError("no fields to update")
        for name in NOT_NULLABLE_PATCH_FIELDS:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class Product(BaseModel):
    id: int
    sku: str
    title: str
    unit_price: Decimal
    category: str | None
    reorder_point: int
    description: str | None
    on_hand: int
    created_at: datetime
    updated_at: datetime
    version: int

    @field_serializer("unit_price")
    def _price(self, value: Decimal) -> str:
        return f"{value:.2f}"

    @property
    def etag(self) -> str:
        return f'"{self.id}.{self.version}"'


NOT_NULLABLE_PATCH_FIELDS = ("title", "unit_price", "reorder_point")


_ETAG_RE = re.compile(r'(?:W/)?"([0-9]{1,19})\.([0-9]{1,10})"')
_MAX_BIGINT = 2**63 - 1
_MAX_VERSION = 2**31 - 1


class InvalidETag(DomainError):
    """An ``If-Match`` this API could not have issued: 422, not a 412 (which says the product
    changed) and never a number PostgreSQL cannot take."""

    status = 422
    type_slug = "invalid-etag"
    title = "Malformed ETag"


def parse_etag(value: str) -> tuple[int, int]:
    """``(product id, version)`` from an ETag this API issued (``"12.3"``, optionally ``W/``):
    ASCII digits only, the id a bigint and the version an integer; else ``InvalidETag``."""
    match = _ETAG_RE.fullmatch(value.strip())
    if match is None:
        raise InvalidETag('If-Match must be an ETag this API issued, like "12.3", or *')
    ident, version = int(match[1]), int(match[2])
    if ident > _MAX_BIGINT or version > _MAX_VERSION:
        raise InvalidETag("If-Match names a product id or version out of range")
    return ident, version
